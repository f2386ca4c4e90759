"""The commands: each reads as its order of steps over the components; no command imports another."""
