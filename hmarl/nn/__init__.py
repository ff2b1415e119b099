"""Network building blocks, batched over the agents of a level."""
from hmarl.nn.gnn import GNN_LAYERS, GraphEncoder, NeighbourConv, children_to_parent
from hmarl.nn.mlp import AgentMLP, clip_grad_norm_per_agent

__all__ = ["AgentMLP", "GNN_LAYERS", "GraphEncoder", "NeighbourConv", "children_to_parent",
           "clip_grad_norm_per_agent"]
