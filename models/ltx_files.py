"""Where Lightricks publishes the LTX-2.3 weights dubflow loads, and the file names they carry."""

BASE_REPO = "Lightricks/LTX-2.3"
LORA_REPO = "Lightricks/LTX-2.3-22b-IC-LoRA-LipDub"
LIPDUB_LORA_FILE = "ltx-2.3-22b-ic-lora-lipdub-0.9.safetensors"
