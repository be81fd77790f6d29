"""layer-planner: place LLM layers on heterogeneous GPU clusters."""

__version__ = "0.1.0"
