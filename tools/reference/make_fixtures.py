"""Builds tiny random-weight models with diffusers/transformers (the reference) and writes
them plus the inputs/outputs of every component to tests/fixtures/.

Run through tools/reference/regenerate.sh. `make_fixtures.py [part ...]` regenerates only the
named parts (see PARTS)."""
import importlib
import sys

from common import deterministic

# Each part is a module here with `generate()`; the order matters where a part reads what an
# earlier one wrote (sd_pipeline writes tests/fixtures/tiny-sd used by the others).
PARTS = ["sd_pipeline", "text", "unet", "vae", "schedulers", "pipelines", "hub_layouts", "img2img", "lora"]


def main(argv):
    chosen = argv or PARTS
    for name in chosen:
        if name not in PARTS:
            sys.exit(f"unknown part {name!r}; parts: {', '.join(PARTS)}")
    for name in chosen:
        module = importlib.import_module(name)
        deterministic()
        print(f"[part] {name}")
        module.generate()


if __name__ == "__main__":
    main(sys.argv[1:])
