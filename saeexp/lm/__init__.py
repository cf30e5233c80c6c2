"""A language model in the loop (data=lm): loading, corpus packing, the activation cache, harvesting,
splicing an SAE into the model, and the CE-loss evaluation. Imported only when used: heavy dependencies
(transformers, transformer_lens, datasets) load inside the functions that need them."""
