"""``esr info``: parameters, FLOPs and minimum input size of a model."""
from __future__ import annotations

import json

from ..infer.complexity import count_flops, count_parameters
from ..infer.loading import MODEL_NAMES, load, min_input_size


def cmd_info(args) -> int:
    model = load(args.model)
    info = {"model": args.model, "architecture": type(model).__name__,
            "parameters": count_parameters(model), "flops_256x256": count_flops(model, 256, 256),
            "scale": model.scale, "min_input_size": min_input_size(model)}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{info['architecture']} ({args.model})\n"
              f"  parameters        {info['parameters'] / 1e6:.4f} M\n"
              f"  FLOPs @256x256    {info['flops_256x256'] / 1e9:.3f} G (conv MACs, challenge convention)\n"
              f"  scale             x{info['scale']}\n"
              f"  min input size    {info['min_input_size']}x{info['min_input_size']}")
    return 0


def add_parser(sub) -> None:
    info = sub.add_parser("info", help="parameters, FLOPs and minimum input size of a model")
    info.add_argument("--model", default="ifadnet", choices=MODEL_NAMES)
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)
