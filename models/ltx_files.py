"""Where Lightricks publishes the LTX-2.3 weights dubflow loads, and the file names they carry."""

from pathlib import Path

BASE_REPO = "Lightricks/LTX-2.3"
# Upstream renamed LipDub to DubIt (LTX-2 v1.2.0): the LoRA's repository and file carry the new name.
LORA_REPO = "Lightricks/LTX-2.3-22b-IC-LoRA-DubIt"
DUBIT_LORA_FILE = "ltx-2.3-22b-ic-lora-dubit-0.9.safetensors"
# The same LoRA as first published (repository Lightricks/LTX-2.3-22b-IC-LoRA-LipDub): still accepted.
LIPDUB_LORA_FILE = "ltx-2.3-22b-ic-lora-lipdub-0.9.safetensors"
LORA_FILES = (DUBIT_LORA_FILE, LIPDUB_LORA_FILE)


def lora_file(weights_dir: Path) -> Path:
    """The IC-LoRA in ``weights_dir`` under either published name (DubIt first); the DubIt path if neither is there."""
    for name in LORA_FILES:
        if (Path(weights_dir) / name).is_file():
            return Path(weights_dir) / name
    return Path(weights_dir) / DUBIT_LORA_FILE
