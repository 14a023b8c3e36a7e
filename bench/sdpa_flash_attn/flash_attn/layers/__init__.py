"""flash_attn.layers of the SDPA stand-in: the rotary helper only."""
