from cat_adapter.methods.lora.method import LoRAMethod

__all__ = ["LoRAMethod"]
