"""The speed peer: BenchMARL's MAPPO on VMAS balance, timed the way ``python -m hmarl.studies.bench`` times ours.

BenchMARL is not a dependency of hmarl; install it in a virtual environment of its own,
outside this repository, and point the bench at that interpreter::

    python -m venv /tmp/peer && /tmp/peer/bin/pip install torch==2.13.0
    /tmp/peer/bin/pip install benchmarl==1.5.2 vmas==1.5.2 torchrl==0.11.1 tensordict==0.11.0 "setuptools<81"
    /tmp/peer/bin/pip install torch==2.13.0   # benchmarl's torchvision asks for a newer torch: keep ours
    python -m hmarl.studies.bench --only vmas_balance --peer-python /tmp/peer/bin/python

(the versions the bench's figures were measured with; torchvision's complaint about the older
torch is harmless: the script runs with it, as measured).

The script can also run alone (``/tmp/peer/bin/python docs/scripts/peer_benchmarl.py --n-envs 64``).
Settings mirror the bench's: ``n_envs`` copies x 100 steps per batch (one 100-step episode
per copy), 4 epochs of 4 minibatches, no evaluation, no loggers, no checkpoints. The
figure is frames (env steps) per second of ``Experiment.run``, setup left out; printed as
one line ``frames_per_s=<n>`` that the bench reads.
"""
import argparse
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-envs", type=int, default=64, help="VMAS copies")
    parser.add_argument("--frames", type=int, default=64_000, help="env steps to train for")
    parser.add_argument("--n-agents", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch
    from benchmarl.algorithms import MappoConfig
    from benchmarl.environments import VmasTask
    from benchmarl.experiment import Experiment, ExperimentConfig
    from benchmarl.models.mlp import MlpConfig

    torch.set_num_threads(args.threads)
    config = ExperimentConfig.get_from_yaml()
    config.sampling_device = config.train_device = config.buffer_device = args.device
    config.max_n_frames = args.frames
    batch = args.n_envs * 100
    config.on_policy_collected_frames_per_batch = batch
    config.on_policy_n_envs_per_worker = args.n_envs
    config.on_policy_n_minibatch_iters = 4  # epochs over each batch
    config.on_policy_minibatch_size = batch // 4  # 4 minibatches per epoch, as in hmarl's bench
    config.evaluation = False
    config.loggers = []
    config.create_json = False
    config.checkpoint_interval = 0
    config.save_folder = tempfile.mkdtemp()

    task = VmasTask.BALANCE.get_from_yaml()
    task.config["n_agents"] = args.n_agents
    experiment = Experiment(task=task, algorithm_config=MappoConfig.get_from_yaml(),
                            model_config=MlpConfig.get_from_yaml(), critic_model_config=MlpConfig.get_from_yaml(),
                            seed=0, config=config)
    start = time.perf_counter()
    experiment.run()
    seconds = time.perf_counter() - start
    print(f"benchmarl mappo vmas_balance n_envs={args.n_envs} frames={args.frames} "
          f"wall_s={seconds:.1f} frames_per_s={args.frames / seconds:.0f}")


if __name__ == "__main__":
    main()
