from .cache import KVCache
from .phi3v import CausalLMOutput, Phi3VForCausalLM, Phi3VModel

__all__ = ["CausalLMOutput", "KVCache", "Phi3VForCausalLM", "Phi3VModel"]
