"""Turn a GGUF model file into a Hugging Face folder that vLLM can load.

vLLM loads models in Hugging Face format; the embedded model ships as GGUF (llama.cpp's
format). transformers reads GGUF and de-quantizes it; the weights are then written
again as a plain (unquantized) model with its tokenizer and chat template:

    python -m refinegraph.models.gguf_to_hf OUT_DIR [--gguf FILE] [--dtype float32|bfloat16|float16]

Without --gguf it converts the embedded SmolLM2-135M-Instruct file. Needs torch,
transformers, gguf and accelerate (scripts/vllm-cpu-env.sh installs them).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def convert(gguf: Path, out: Path, dtype: str = "float32") -> dict[str, object]:
    """Write `out` (config, safetensors weights, tokenizer); returns what was written."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Before anything is written: scripts/vllm-cpu-env.sh takes an existing config.json as done.
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf} carries no chat template; vLLM could not render chat messages for it")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch_dtype)
    # The de-quantized model still says it is GGUF-quantized, which save_pretrained refuses:
    # copy its weights into a model built from the same config without that mark.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"gguf": str(gguf), "out": str(out), "dtype": dtype, "architecture": type(plain).__name__,
            "parameters": sum(p.numel() for p in plain.parameters()),
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the Hugging Face folder to write")
    parser.add_argument("--gguf", type=Path, default=None, help="the GGUF file (default: the embedded model)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    if args.gguf is None:
        from refinegraph.models.local import find_model_file

        args.gguf = find_model_file()
    print(convert(args.gguf, args.out, args.dtype))


if __name__ == "__main__":
    main()
