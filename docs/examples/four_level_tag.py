"""A four-level TAG hierarchy over 8 agents, built by library import.

TAG's systems stop at three levels over 4 agents. This stack goes one deeper and
mixes learners and command types on the way up:

    level 3   1 PPO commander    over the 2 squad leads   every 2 squad steps, sends discrete(3)
    level 2   2 MAPPO squad leads over 2 pair leads each  every 2 pair steps,  sends box(2)
    level 1   4 PPO pair leads   over 2 agents each       every 2 env steps,   sends discrete(5)
    level 0   8 PPO agents       one per env agent        every env step

Every level learns from the sum of its children's rewards (TAG's default). One top
step is 2 * 2 * 2 = 8 env steps, so the rollout length is a multiple of 8.

    python docs/examples/four_level_tag.py --steps 400000 --num-envs 32
    python docs/examples/four_level_tag.py --env vmas_balance --steps 400000
"""
from __future__ import annotations

import argparse
import math

import torch

from hmarl.algorithms.build import build_levels
from hmarl.envs import make_env
from hmarl.run.experiment import CONFIG_DIR, evaluate, load_yaml
from hmarl.run.monitor import EpisodeMonitor

N_AGENTS = 8
LEVELS = [
    {"learner": "ppo"},
    {"learner": "ppo", "group_size": 2, "period": 2, "command": "discrete(5)"},
    {"learner": "mappo", "group_size": 2, "period": 2, "command": "box(2)"},
    {"learner": "ppo", "group_size": 2, "period": 2, "command": "discrete(3)"},
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="vmas_simple_spread", choices=["vmas_simple_spread", "vmas_balance"])
    parser.add_argument("--steps", type=int, default=400_000, help="env steps of training, all copies together")
    parser.add_argument("--num-envs", type=int, default=32, help="env copies stepping together")
    parser.add_argument("--rollout-steps", type=int, default=64, help="env steps per copy between updates")
    parser.add_argument("--max-steps", type=int, default=100, help="episode length")
    parser.add_argument("--eval-envs", type=int, default=8, help="copies of the greedy evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: envs, networks and buffers")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    # TAG's Appendix A settings: 3PPO's PPO block and 2MAPPO-PPO's MAPPO block
    learner_options = {"ppo": load_yaml(CONFIG_DIR / "algorithms" / "tag_3ppo.yaml")["ppo"],
                       "mappo": load_yaml(CONFIG_DIR / "algorithms" / "tag_2mappo_ppo.yaml")["mappo"]}

    def env(num_envs: int, seed: int) -> EpisodeMonitor:
        return EpisodeMonitor(make_env(args.env, num_envs=num_envs, seed=seed, n_agents=N_AGENTS,
                                       max_steps=args.max_steps, device=args.device))

    train_env = env(args.num_envs, args.seed)
    hierarchy = build_levels(train_env, LEVELS, learner_options).to(args.device)
    evaluator = hierarchy.attach(env(args.eval_envs, args.seed + 10_000))  # the same agents, other copies
    for index, level in enumerate(hierarchy.levels):
        print(f"level {index}: {level.spec.n_agents} {type(level.learner).__name__} agent(s), "
              f"obs {level.io.obs_dim}, actions {level.io.action_space}, "
              f"acts every {hierarchy.strides[index]} env step(s)")

    iterations = max(1, args.steps // (args.num_envs * args.rollout_steps))
    hierarchy.reset(seed=args.seed)
    train_return = math.nan
    for iteration in range(iterations):
        hierarchy.rollout(args.rollout_steps)
        losses = hierarchy.update(progress=iteration / iterations)
        mean_return, episodes = train_env.pop()
        if episodes:
            train_return = mean_return
            env_steps = (iteration + 1) * args.num_envs * args.rollout_steps
            print(f"env steps {env_steps:>9,}  train/return {train_return:9.2f}")

    final = evaluate(evaluator, seed=args.seed + 10_000)
    print("final metrics:")
    print(f"  train/return {train_return:.3f}")
    for name, value in final.items():
        print(f"  {name} {value:.3f}")
    for name, value in sorted(losses.items()):
        if name.endswith(("pg_loss", "v_loss")):
            print(f"  {name} {float(value):.4f}")


if __name__ == "__main__":
    main()
