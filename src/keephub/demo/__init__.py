"""Offline demo assets (tiny model, tokenizer, chat data, training script) for exercising keephub end to end."""
