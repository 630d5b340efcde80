"""Export: merge the adapter, convert and quantize to GGUF, write the Ollama Modelfile."""
