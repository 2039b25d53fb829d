"""`sfd export`: a model folder as a single-file checkpoint, a Kohya LoRA or a diffusers copy, with the ComfyUI workflow,
A1111 settings and Hub card that sample it correctly (sfd/core/export). `add_parsers(sub)` wires it into sfd/commands/cli.py."""

from __future__ import annotations


def cmd_export(a) -> int:
    from sfd.core.export import export

    r = export(a.model, a.out, a.format, unet_only=a.unet_only, workflow=a.workflow, overwrite=a.overwrite,
               prompt=a.prompt, hub_id=a.hub_id)
    files = ", ".join(v for k, v in r["files"].items() if k not in ("workflow", "a1111"))
    line = f"exported {a.model} as {a.format} -> {r['out']}: {files}"
    if r["workflow"]:
        line += f"; ComfyUI workflow {r['workflow']}" + (f" (one step at sigma {r['sigma']:.6f}, CFG 1)" if r["sigma"] else "")
    print(line + "; README.md has the A1111 settings and the upload command")
    return 0


def add_parsers(sub) -> None:
    """Add `export` to an argparse subparsers object (sfd/commands/cli.py's build_parser)."""
    from sfd.core.export import FORMATS, WORKFLOWS

    ex = sub.add_parser("export", help="write a model as a single-file checkpoint, Kohya LoRA or diffusers copy, with a ComfyUI "
                                       "workflow, A1111 settings and a Hub model card")
    ex.add_argument("model", metavar="MODEL", help="model folder (sfd erase / distill output, a teacher or a baseline)")
    ex.add_argument("--format", required=True, choices=FORMATS,
                    help="single-file: original SD layout (SD 1.x/2.x, SDXL); kohya-lora: a LoRA run's generator adapter; "
                         "diffusers: a copy of the folder")
    ex.add_argument("--out", required=True, help="output folder")
    ex.add_argument("--unet-only", action="store_true", help="single-file: the UNet alone (ComfyUI's UNet loader)")
    ex.add_argument("--workflow", choices=WORKFLOWS, default="auto",
                    help="ComfyUI workflow and A1111 note: auto (one step for one-step models, the model's own sampler "
                         "otherwise), one-step (refused for multi-step models), none")
    ex.add_argument("--prompt", help="the workflow's prompt (default: the run's first forget prompt)")
    ex.add_argument("--hub-id", help="repository id for the card's upload command (default YOUR-NAME/<out name>)")
    ex.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ex.set_defaults(func=cmd_export)
