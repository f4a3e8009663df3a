"""A copy of an ONNX model that asks for another input normalisation.

Usage: python bench/normalisation_swap.py MODEL.onnx OUT.onnx [--to rank]

Measures what weights do on inputs normalised in a way they were *not* trained on (e.g.
the percentile-trained run18 on histogram-equalised inputs), without touching the
inference code: the weights are unchanged, only the ``model_config`` metadata's
``input_normalisation`` (which ``skullstrip.infer`` reads) is rewritten. Then, e.g.,
``python bench/postprocess_sweep.py --borders=-1.5 --openings 4 --model OUT.onnx``.
"""

from __future__ import annotations

import argparse
import json

import onnx

from skullstrip.conform import INTENSITY_NORMALISATIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--to", default="rank", choices=INTENSITY_NORMALISATIONS)
    args = parser.parse_args()
    proto = onnx.load(args.model)
    for entry in proto.metadata_props:
        if entry.key == "model_config":
            config = json.loads(entry.value)
            print(f"{args.model}: {config.get('input_normalisation', 'percentile')} -> {args.to}")
            config["input_normalisation"] = args.to
            entry.value = json.dumps(config)
            break
    else:
        raise SystemExit(f"{args.model} has no model_config metadata: not a skullstrip export")
    onnx.save(proto, args.out)


if __name__ == "__main__":
    main()
