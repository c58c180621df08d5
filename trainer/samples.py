"""Deterministic generator for the four small sample datasets that CPU runs and CI train on.

Each sample mirrors the columns of the hub dataset a recipe names for GPU users, so one recipe column mapping
works on both. All text comes from the word lists below (written for this project, not copied from any
dataset). Only `random.Random(seed)` is used and no set is iterated, so the files are byte-identical across
runs and Python versions; tests regenerate them and compare with the committed copies.

    python -m trainer.samples [OUT_DIR]     # default: recipes/samples
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 20250101

# --- medical: mirrors FreedomIntelligence/medical-o1-reasoning-SFT (Question, Complex_CoT, Response) ---

# (diagnosis, findings, first-line management, (min age, max age), sexes). Every finding belongs to exactly
# one condition, so any three of them identify the diagnosis and a tiny model can learn the mapping.
MEDICAL_CONDITIONS = (
    ("acute appendicitis",
     ("pain shifting from the navel to the right iliac fossa", "loss of appetite",
      "tenderness at McBurney's point", "pain on coughing"),
     "give IV antibiotics and arrange an appendectomy", (12, 40), ("man", "woman")),
    ("community-acquired pneumonia",
     ("a cough with rusty sputum", "crackles over the right lower lung", "a high fever with chills",
      "lobar consolidation on chest X-ray"),
     "start oral amoxicillin and review within 48 hours", (25, 80), ("man", "woman")),
    ("diabetic ketoacidosis",
     ("fruity-smelling breath", "deep rapid breathing", "heavy thirst and frequent urination",
      "high blood glucose with urine ketones"),
     "give IV fluids, a fixed-rate insulin infusion and potassium", (14, 35), ("man", "woman")),
    ("acute myocardial infarction",
     ("crushing central chest pain", "pain spreading to the left arm", "cold sweating",
      "ST elevation on the ECG"),
     "give aspirin and send for emergency coronary angioplasty", (45, 80), ("man", "woman")),
    ("iron deficiency anaemia",
     ("pale inner eyelids", "spoon-shaped nails", "a craving to chew ice", "a low ferritin level"),
     "start oral iron and look for the source of blood loss", (18, 60), ("woman", "man")),
    ("hypothyroidism",
     ("weight gain without eating more", "feeling cold all the time", "coarse dry skin",
      "a raised TSH with low free T4"),
     "start daily levothyroxine and recheck TSH in six weeks", (30, 70), ("woman", "man")),
    ("migraine",
     ("a throbbing one-sided headache", "zigzag lights before the pain", "sensitivity to light",
      "nausea that eases in a dark room"),
     "give an NSAID or a triptan at onset and rest in a dark room", (16, 45), ("woman", "man")),
    ("lower urinary tract infection",
     ("burning on passing urine", "needing to pass urine very often", "suprapubic discomfort",
      "nitrites on urine dipstick"),
     "give a short course of nitrofurantoin", (18, 65), ("woman",)),
    ("acute gout",
     ("a red hot swollen big toe", "pain that woke the patient at night", "a high serum urate",
      "needle-shaped crystals in joint fluid"),
     "give an NSAID or colchicine and rest the joint", (40, 75), ("man",)),
    ("acute asthma",
     ("wheeze on breathing out", "chest tightness at night", "a reduced peak flow",
      "breathlessness after cold air"),
     "give inhaled salbutamol and a short course of oral prednisolone", (8, 40), ("man", "woman")),
    ("deep vein thrombosis",
     ("one swollen calf", "calf tenderness on squeezing", "a recent long-haul flight", "a raised D-dimer"),
     "confirm with ultrasound and start an oral anticoagulant", (30, 75), ("man", "woman")),
    ("acute cholecystitis",
     ("right upper abdominal pain after fatty food", "a positive Murphy's sign", "pain at the right shoulder tip",
      "a thick gallbladder wall on ultrasound"),
     "give IV antibiotics and analgesia and plan early cholecystectomy", (35, 70), ("woman", "man")),
)

_MED_QUESTIONS = (
    "A {age}-year-old {sex} presents with {findings}. What is the likely diagnosis and first-line management?",
    "A {age}-year-old {sex} has {findings}. What is the diagnosis, and how should it be treated?",
    "A {sex} aged {age} comes in with {findings}. What is the likely cause and the first step?",
    "Patient: {age}-year-old {sex} with {findings}. Give the most likely diagnosis and initial treatment.",
)
_MED_REASONING = (
    "The key findings are {f1}, {f2} and {f3}. {F1} together with {f2} points to {dx}. "
    "{F3} fits the same picture, so the diagnosis is {dx}.",
    "First, note {f1} in a {age}-year-old {sex}. Next, {f2} and {f3} narrow the picture. "
    "Together these findings are typical of {dx}.",
    "{F1}, {f2} and {f3} form a recognisable pattern. That pattern fits {dx} better than the alternatives.",
    "Step 1: the patient has {f1}. Step 2: {f2} makes {dx} likely. Step 3: {f3} confirms {dx}.",
)
_MED_RESPONSES = (
    "The most likely diagnosis is {dx}. First-line management is to {mx}.",
    "This is {dx}; {mx}.",
    "Diagnosis: {dx}. Management: {mx}.",
)


def _cap(text: str) -> str:
    """Upper-case the first letter only (str.capitalize would lower-case 'ECG', 'TSH' and names)."""
    return text[:1].upper() + text[1:]


def _medical_row(rng: random.Random, condition: tuple) -> dict:
    """One vignette: three of the condition's four findings in random order, a random age and sex."""
    dx, findings, mx, (lo, hi), sexes = condition
    f1, f2, f3 = rng.sample(findings, 3)
    slots = {"age": rng.randint(lo, hi), "sex": rng.choice(sexes), "dx": dx, "mx": mx,
             "f1": f1, "f2": f2, "f3": f3, "F1": _cap(f1), "F3": _cap(f3), "findings": f"{f1}, {f2} and {f3}"}
    return {
        "Question": rng.choice(_MED_QUESTIONS).format(**slots),
        "Complex_CoT": rng.choice(_MED_REASONING).format(**slots),
        "Response": _cap(rng.choice(_MED_RESPONSES).format(**slots)),
    }


def medical_rows(seed: int = SEED, per_condition: int = 20) -> list[dict]:
    """Clinical vignettes, `per_condition` for each condition (240 by default), shuffled."""
    rng = random.Random(seed)
    rows = [_medical_row(rng, c) for c in MEDICAL_CONDITIONS for _ in range(per_condition)]
    rng.shuffle(rows)
    return rows


# --- news: LLaMA-Factory sharegpt layout, a 10-way Chinese headline classifier ---

NEWS_CLASSES = ("政治", "经济", "科技", "娱乐", "体育", "教育", "健康", "国际", "国内", "社会")

# Five keywords per class; no keyword is shared or a substring of another, so the keyword alone decides the
# class and the held-out accuracy test (>= 90%) has a clean signal to learn.
NEWS_KEYWORDS = {
    "政治": ("人大代表", "政协提案", "反腐倡廉", "党代会", "立法草案"),
    "经济": ("股市行情", "通货膨胀", "央行降息", "进出口贸易", "消费指数"),
    "科技": ("人工智能", "芯片研发", "量子计算", "5G基站", "火箭发射"),
    "娱乐": ("电影票房", "明星演唱会", "综艺节目", "颁奖典礼", "偶像剧"),
    "体育": ("足球联赛", "马拉松", "奥运金牌", "篮球决赛", "乒乓球"),
    "教育": ("高考志愿", "双减政策", "大学招生", "在线课堂", "教师培训"),
    "健康": ("流感疫苗", "睡眠质量", "高血压", "健身减脂", "中医养生"),
    "国际": ("联合国大会", "中东局势", "欧盟峰会", "北约", "驻外使馆"),
    "国内": ("春运", "乡村振兴", "南水北调", "西部大开发", "高铁新线"),
    "社会": ("交通事故", "见义勇为", "社区养老", "失物招领", "邻里纠纷"),
}

# The reasoning names the class's domain first, then the class: the model has to recognise the keyword in the
# headline, not copy it verbatim. Copying arbitrary multi-token keywords through a 64-wide, 2-layer model with
# untied embeddings is beyond what LoRA can learn in a CPU minute; classifying them is not.
NEWS_RATIONALES = {
    "政治": "标题涉及政府、会议和政策制定", "经济": "标题涉及市场、金融和贸易",
    "科技": "标题涉及科学研究和技术突破", "娱乐": "标题涉及影视、综艺和明星",
    "体育": "标题涉及体育比赛和运动员", "教育": "标题涉及学校、考试和招生",
    "健康": "标题涉及疾病预防和身体保健", "国际": "标题涉及其他国家和国际组织",
    "国内": "标题涉及国内的交通和建设", "社会": "标题涉及社会事件和日常生活",
}

# Filler carries no class signal: every class uses every template equally often. The keyword sits in 「」 as
# headlines often quote a term; without the brackets byte-level BPE merges it with the filler around it (大学招生
# + 成为 -> 大学 / 招 / 生成 / 为), so the same keyword would be different tokens in different headlines.
_NEWS_TEMPLATES = (
    "今日「{kw}」引发广泛关注",
    "「{kw}」最新进展公布",
    "记者调查：「{kw}」背后的故事",
    "专家解读「{kw}」带来的影响",
    "「{kw}」成为本周热门话题",
    "多方回应「{kw}」相关问题",
    "一图看懂「{kw}」",
    "「{kw}」迎来新变化",
)


def _news_row(cls: str, kw: str, template: str) -> dict:
    """One sharegpt conversation: the headline prompt and a think block naming the domain, then the class."""
    answer = f"<think>\n{NEWS_RATIONALES[cls]}，所以属于{cls}。\n</think>\n\n{cls}"
    return {"conversations": [
        {"from": "human", "value": "新闻分类:" + template.format(kw=kw)},
        {"from": "gpt", "value": answer},
    ]}


def news_rows(seed: int = SEED) -> list[dict]:
    """Every (class, keyword, template) combination once: 10 x 5 x 8 = 400 rows, 40 per class, shuffled."""
    rows = [_news_row(cls, kw, t) for cls in NEWS_CLASSES for kw in NEWS_KEYWORDS[cls] for t in _NEWS_TEMPLATES]
    random.Random(seed).shuffle(rows)
    return rows


# --- imdb: mirrors stanfordnlp/imdb (text, label; 0 negative, 1 positive) ---

_FILMS = ("This thriller", "This comedy", "The sequel", "This drama", "The remake", "This western",
          "This animated film", "The new horror film", "This musical", "The war film")
_ASPECTS = ("the acting", "the plot", "the script", "the soundtrack", "the ending", "the camera work",
            "the dialogue", "the pacing", "the lead performance", "the direction")
_WORDS = {  # label -> (adjectives, verbs for "I ___ it", closing verdicts)
    1: (("wonderful", "brilliant", "moving", "delightful", "superb", "gripping", "charming", "stunning"),
        ("loved", "adored", "really enjoyed", "was thrilled by"),
        ("Highly recommended.", "A must-see.", "I would happily watch it again.",
         "Easily one of the best this year.")),
    0: (("dull", "clumsy", "tedious", "awful", "lifeless", "confusing", "boring", "terrible"),
        ("hated", "disliked", "regretted watching", "was let down by"),
        ("Not recommended.", "Skip this one.", "I want my two hours back.", "Easily one of the worst this year.")),
}
_REVIEW_TEMPLATES = (
    "{Film} was {a1}. {Aspect} felt {a2} throughout.",
    "{Aspect} is {a1} and {aspect2} is {a2}. {verdict}",
    "I {verb} {film}; {aspect} was {a1}. {verdict}",
    "The whole film was {a1}: {aspect} was {a2} from start to finish.",
    "{Film} is {a1}, and {aspect} is {a2}. {verdict}",
    "{Film} had {a1} moments, and {aspect} was {a2}.",
)


def _review(rng: random.Random, label: int) -> str:
    """One short review; every sentiment word comes from the list for `label`, so the label is unambiguous."""
    adjectives, verbs, verdicts = _WORDS[label]
    a1, a2 = rng.sample(adjectives, 2)
    aspect, aspect2 = rng.sample(_ASPECTS, 2)
    film = rng.choice(_FILMS)
    return rng.choice(_REVIEW_TEMPLATES).format(
        Film=film, film=film[0].lower() + film[1:], Aspect=_cap(aspect), aspect=aspect, aspect2=aspect2,
        a1=a1, a2=a2, verb=rng.choice(verbs), verdict=rng.choice(verdicts))


def imdb_rows(seed: int = SEED, per_label: int = 150) -> list[dict]:
    """`per_label` distinct reviews of each sentiment (300 by default), shuffled."""
    rng = random.Random(seed)
    rows, seen = [], set()  # `seen` is only tested for membership, never iterated
    for label in (1, 0):
        count = 0
        while count < per_label:
            text = _review(rng, label)
            if text not in seen:
                seen.add(text)
                rows.append({"text": text, "label": label})
                count += 1
    rng.shuffle(rows)
    return rows


# --- alpaca: instruction / input / output, small tasks whose output is computable from the input ---

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Egypt": "Cairo", "Canada": "Ottawa",
            "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo", "India": "New Delhi", "Spain": "Madrid",
            "Australia": "Canberra", "Brazil": "Brasilia"}
_NOUNS = ("garden", "rocket", "window", "planet", "candle", "river", "pencil", "market", "silver", "forest",
          "bridge", "orange", "harbor", "lantern", "meadow", "castle")
_SENTENCE_WORDS = ("the", "small", "dog", "ran", "across", "a", "quiet", "green", "field", "before", "sunset",
                   "and", "then", "slept", "under", "old", "tree")


def _sentence(rng: random.Random) -> str:
    """A 3-9 word lowercase phrase; it need not be grammatical, only countable."""
    return " ".join(rng.choice(_SENTENCE_WORDS) for _ in range(rng.randint(3, 9)))


def _task_add(rng: random.Random) -> tuple[str, str, str]:
    """Sum of two numbers given in the input."""
    a, b = rng.randint(1, 99), rng.randint(1, 99)
    return "Add the two numbers.", f"{a} and {b}", str(a + b)


def _task_add_inline(rng: random.Random) -> tuple[str, str, str]:
    """Sum with the numbers in the instruction and an empty input."""
    a, b = rng.randint(1, 99), rng.randint(1, 99)
    return f"What is {a} plus {b}?", "", str(a + b)


def _task_reverse(rng: random.Random) -> tuple[str, str, str]:
    """A word spelled backwards."""
    word = rng.choice(_NOUNS)
    return "Reverse the letters of the word.", word, word[::-1]


def _task_count(rng: random.Random) -> tuple[str, str, str]:
    """Number of whitespace-separated words."""
    text = _sentence(rng)
    return "Count the words in the sentence.", text, str(len(text.split()))


def _task_capital(rng: random.Random) -> tuple[str, str, str]:
    """Capital of a country from the table."""
    country = rng.choice(list(CAPITALS))
    return "Give the capital of the country.", country, CAPITALS[country]


def _task_capital_inline(rng: random.Random) -> tuple[str, str, str]:
    """Capital lookup with an empty input."""
    country = rng.choice(list(CAPITALS))
    return f"What is the capital of {country}?", "", CAPITALS[country]


def _task_upper(rng: random.Random) -> tuple[str, str, str]:
    """Upper-casing a few words."""
    text = " ".join(rng.sample(_NOUNS, rng.randint(1, 3)))
    return "Convert the text to upper case.", text, text.upper()


def _task_largest(rng: random.Random) -> tuple[str, str, str]:
    """Maximum of a short list of distinct numbers."""
    numbers = rng.sample(range(1, 100), rng.randint(3, 6))
    return "Give the largest number in the list.", ", ".join(map(str, numbers)), str(max(numbers))


_ALPACA_TASKS = (_task_add, _task_add_inline, _task_reverse, _task_count, _task_capital, _task_capital_inline,
                 _task_upper, _task_largest)


def alpaca_rows(seed: int = SEED, per_task: int = 25) -> list[dict]:
    """`per_task` rows of each task (200 by default), shuffled; two of the eight tasks have an empty input."""
    rng = random.Random(seed)
    rows = []
    for task in _ALPACA_TASKS:
        for _ in range(per_task):
            instruction, input_text, output = task(rng)
            rows.append({"instruction": instruction, "input": input_text, "output": output})
    rng.shuffle(rows)
    return rows


# --- writing ---

SAMPLES = {"medical": medical_rows, "news": news_rows, "imdb": imdb_rows, "alpaca": alpaca_rows}


def to_jsonl(rows: list[dict]) -> str:
    """One JSON object per line, UTF-8 text kept readable, keys in insertion order, `\\n` endings."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_samples(out_dir: Path, seed: int = SEED) -> dict[str, Path]:
    """Write `<name>.jsonl` for every sample into `out_dir`; return name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows_for in SAMPLES.items():
        path = out_dir / f"{name}.jsonl"
        # newline="" so Windows does not turn "\n" into "\r\n" and break byte-identity.
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(to_jsonl(rows_for(seed)))
        paths[name] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m trainer.samples [OUT_DIR]`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1:
        print("usage: python -m trainer.samples [OUT_DIR]", file=sys.stderr)
        return 2
    for name, path in write_samples(Path(args[0] if args else "recipes/samples")).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
