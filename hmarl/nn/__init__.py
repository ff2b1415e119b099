"""Network building blocks, batched over the agents of a level."""
from hmarl.nn.mlp import AgentMLP, clip_grad_norm_per_agent

__all__ = ["AgentMLP", "clip_grad_norm_per_agent"]
