"""Planning (shape binding, constant folding, memory arena) and execution of edgedl graphs."""
