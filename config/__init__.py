"""Configuration shared by every entry script: one option definition, typed dataclasses."""
