"""Text kit: fine-tune BERT/ERNIE-family encoders (cls, pair, ner, mrc)."""
