"""The models: the homework's nets (registered through the same hook as any plugin's),
shared blocks, architecture tables and gradients with respect to a model's input.
"""
