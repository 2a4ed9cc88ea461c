"""llama.cpp: every llama_cpp call, toy models, chat templates, quantization facts."""
