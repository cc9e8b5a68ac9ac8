"""Media and file helpers every layer may import: PyAV reading/writing, audio DSP, hashing and atomic writes."""
