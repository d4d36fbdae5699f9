"""VRQ tokenizer (stage ``vrq``): semantic IDs shared by the views of one item; see ``onevision.vrq.api``."""
