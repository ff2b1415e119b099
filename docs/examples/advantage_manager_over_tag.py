"""A HiMPo manager over a TAG stack: advantage rewards feeding TAG's middle level.

No paper has this hierarchy. Its two lower levels are TAG's 2PPO over pairs; the top is
HiMPo's manager, and the middle level learns the way HiMPo's sub-managers do:

    level 2   1 graph_ppo manager  over the 2 pair leads  every 2 pair steps, sends a box(4) goal per child
    level 1   2 PPO pair leads     over 2 agents each     every 2 env steps,  sends discrete(5)
    level 0   4 PPO agents         one per env agent      every env step

- the manager learns from the env reward summed over its period (``sum_up``) with GAE
  lambda 0, and its critic values each (manager, child) pair, so its advantage is per child;
- each pair lead learns from that advantage for the goal it was given, divided by the
  manager's period, plus its own pair's env reward (``reward: upper_advantage`` with
  ``env_reward_coef: 1``; HiMPo Eq. 5 with the local term of its sub-managers);
- the bottom agents learn from their own env reward (``sum_up``), as in TAG.

The Hierarchy's top-down update makes this work: the manager updates first, and its
advantages are written into the pair leads' rewards before they update.

    python docs/examples/advantage_manager_over_tag.py --steps 400000 --num-envs 32
"""
from __future__ import annotations

import argparse
import math

import torch

from hmarl.algorithms.build import build_levels
from hmarl.envs import make_env
from hmarl.run.experiment import CONFIG_DIR, evaluate, load_yaml
from hmarl.run.monitor import EpisodeMonitor

LEVELS = [
    {"learner": "ppo"},
    {"learner": "ppo", "group_size": 2, "period": 2, "command": "discrete(5)",
     "reward": "upper_advantage", "reward_options": {"env_reward_coef": 1.0}},
    {"learner": "graph_ppo", "group_size": "all", "period": 2, "command": "box(4)",
     "options": {"graph": "none", "gae_lambda": 0.0}},
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="vmas_balance", help="a registered env; its agents pair up")
    parser.add_argument("--n-agents", type=int, default=4, help="env agents (a multiple of 2)")
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

    # TAG's 3PPO settings for the PPO levels, HiMPPO's for the manager; the pair leads learn from
    # the manager's advantages, so both update after every rollout (no 2,048-transition buffer)
    tag_ppo = load_yaml(CONFIG_DIR / "algorithms" / "tag_3ppo.yaml")["ppo"]
    learner_options = {"ppo": {**tag_ppo, "transitions_per_update": None},
                       "graph_ppo": load_yaml(CONFIG_DIR / "algorithms" / "himppo.yaml")["graph_ppo"]}

    def env(num_envs: int, seed: int) -> EpisodeMonitor:
        return EpisodeMonitor(make_env(args.env, num_envs=num_envs, seed=seed, n_agents=args.n_agents,
                                       max_steps=args.max_steps, device=args.device))

    train_env = env(args.num_envs, args.seed)
    hierarchy = build_levels(train_env, LEVELS, learner_options).to(args.device)
    evaluator = hierarchy.attach(env(args.eval_envs, args.seed + 10_000))
    for index, level in enumerate(hierarchy.levels):
        print(f"level {index}: {level.spec.n_agents} {type(level.learner).__name__} agent(s), "
              f"reward rule {type(level.reward_rule).__name__}, acts every {hierarchy.strides[index]} env step(s)")

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
            print(f"env steps {env_steps:>9,}  train/return {train_return:9.3f}")

    # what the pair leads learned from in the last rollout: the manager's advantage per child
    manager_advantage = hierarchy.published[2].outputs["advantages"]  # [T, B, 1, 2]
    final = evaluate(evaluator, seed=args.seed + 10_000)
    print("final metrics:")
    print(f"  train/return {train_return:.3f}")
    for name, value in final.items():
        print(f"  {name} {value:.3f}")
    print(f"  manager advantage per child: shape {tuple(manager_advantage.shape)}, "
          f"std {float(manager_advantage.std()):.4f}")
    for name, value in sorted(losses.items()):
        if name.endswith(("pg_loss", "v_loss")):
            print(f"  {name} {float(value):.4f}")


if __name__ == "__main__":
    main()
