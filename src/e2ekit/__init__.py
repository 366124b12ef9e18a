"""e2ekit."""
