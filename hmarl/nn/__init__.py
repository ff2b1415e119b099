"""Network building blocks, batched over the agents of a level.

The graph layers (:mod:`hmarl.nn.gnn`) are imported on first use (:mod:`hmarl.lazy`): they
import torch-geometric (about 1.4 s), which only graph learners need, while every level's
communication imports ``AgentMLP`` from here.
"""
from hmarl.lazy import module_dir, module_getattr

_NAMES = {
    **dict.fromkeys(["GNN_LAYERS", "GraphEncoder", "NeighbourConv", "children_to_parent"], "hmarl.nn.gnn"),
    **dict.fromkeys(["AgentMLP", "clip_grad_norm_per_agent"], "hmarl.nn.mlp"),
    "AgentGRU": "hmarl.nn.rnn",
}

__all__ = ["AgentGRU", "AgentMLP", "GNN_LAYERS", "GraphEncoder", "NeighbourConv", "children_to_parent",
           "clip_grad_norm_per_agent"]
__getattr__ = module_getattr(__name__, _NAMES, globals())
__dir__ = module_dir(_NAMES, globals())
