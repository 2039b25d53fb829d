"""`sfd demo`: a Gradio page with the original and an erased model side by side (sfd/app/demo.py).

`add_parsers(subparsers)` adds the subcommand to the main CLI (sfd/commands/cli.py's build_parser). gradio is imported
only when the command runs (it is the optional `demo` extra), never by `import sfd`.
"""

from __future__ import annotations

import ipaddress
import os
import sys

from sfd.kernel.errors import SFDError

LOOPBACK_HELP = "address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the demo to your network)"


def _check_paths(paths, what: str) -> None:
    from pathlib import Path

    for p in paths:
        if p and not Path(p).exists():
            raise SFDError(f"{what} {p!r} does not exist")


def cmd_demo(a) -> int:
    from sfd.app.catalog import describe_model

    if a.port > 65535:  # argparse checks >= 0; a larger port fails deep inside the server start
        raise SFDError(f"--port must be from 0 to 65535, got {a.port}")
    _check_paths(a.model or (), "--model")
    _check_paths([a.base, a.compare, a.clip, a.judge], "path")
    for p in [*(a.model or ()), a.base, a.compare]:
        if p:
            describe_model(p)  # one-line error for a folder that is not a model
    # torch loads with the first model, after the page is served; only an explicit CUDA device is checked now.
    device = a.device
    if device.startswith("cuda"):
        from sfd.kernel.distributed import resolve_device as _device

        device = _device(device)
    elif device not in ("auto", "cpu"):
        raise SFDError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)
    try:
        loopback = ipaddress.ip_address(a.host).is_loopback
    except ValueError:
        loopback = a.host == "localhost"
    if not loopback:
        print(f"sfd demo: serving on {a.host}: other machines on your network can use it", file=sys.stderr)

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no telemetry, no version check
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SFDError("the demo needs gradio: pip install 'sfd-erase[demo]' (or pip install gradio)") from None
    from sfd.app.demo import DemoConfig, launch

    config = DemoConfig(models=tuple(a.model or ()), base=a.base, compare=a.compare, clip=a.clip, judge=a.judge, device=device,
                        threads=a.threads, concurrency=a.concurrency, work_dir=a.work_dir, preload=not a.no_preload)
    launch(config, host=a.host, port=a.port, block=True, quiet=False)
    return 0


def add_parsers(sub) -> None:
    """Add `demo` to an argparse subparsers object (sfd/commands/cli.py's build_parser)."""
    from sfd.commands.cli_args import nonneg_int as _nonneg_int, pos_int as _pos_int

    d = sub.add_parser("demo", help="Gradio page: the original and an erased model side by side, with timings and concept scores")
    d.add_argument("--host", default="127.0.0.1", help=LOOPBACK_HELP)
    d.add_argument("--port", type=_nonneg_int("--port"), default=7860, help="port (default 7860; 0 picks a free one)")
    d.add_argument("--model", action="append", help="model folder to offer besides checkpoints/ and runs/ (repeatable)")
    d.add_argument("--base", help="original model shown first (default: the teacher the --compare model was erased from)")
    d.add_argument("--compare", help="erased model shown first (default: the one written most recently under runs/ or --model; "
                                     "without any, the bundled shapes one-step base)")
    d.add_argument("--clip", help="open_clip folder for concept scores (default: checkpoints/shapes/clip)")
    d.add_argument("--judge", help="classifier judge for class-conditional models (default: checkpoints/digits/judge)")
    d.add_argument("--concurrency", type=_pos_int("--concurrency"), default=1,
                   help="generations run at once (default 1: on a CPU each one already uses the cores)")
    d.add_argument("--threads", type=_pos_int("--threads"), help="CPU threads for torch (default: torch's)")
    d.add_argument("--work-dir", help="folder for the audits run from the page (default: a new temporary folder)")
    d.add_argument("--no-preload", action="store_true",
                   help="do not load the default models in the background at start (the page still draws them when opened)")
    d.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    d.set_defaults(func=cmd_demo)


def main(argv: list[str] | None = None) -> int:
    """`python -m sfd.commands.cli_demo`: the `sfd` command line with demo alone (`sfd` itself has every command)."""
    from sfd.commands.cli_args import main_with

    return main_with(add_parsers, argv)


if __name__ == "__main__":
    sys.exit(main())
