"""`python -m trainer.webui [--host H] [--port P]` (`make webui`): the web UI on 127.0.0.1:7860 by default."""
from __future__ import annotations

import argparse
import os

from trainer.errors import run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.webui", description="The r1-tune web UI.")
    parser.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1",
                        help="address to listen on (default 127.0.0.1; any other needs WEBUI_AUTH=user:password)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 7860))
    parser.set_defaults(command=_serve)
    return run_command(parser.parse_args(argv))


def _serve(args) -> int:
    from trainer.webui.app import serve

    serve(args.host, args.port, os.environ.get("WEBUI_AUTH"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
