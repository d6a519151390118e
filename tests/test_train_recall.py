"""The training example (examples/train_recall.py), tiny: a compiled causal softmax learns recall."""
import torch

from .conftest import load_example


def test_recall_batches_ask_for_values_seen_earlier():
    example = load_example("train_recall")
    key_ids, value_ids, target = example.recall_batch(5, 6, 10, 4, 3, torch.Generator().manual_seed(0))
    assert key_ids.shape == value_ids.shape == (5, 9) and target.shape == (5, 3)
    assert (value_ids[:, 6:] == 4).all()
    for b in range(5):
        memory = dict(zip(key_ids[b, :6].tolist(), value_ids[b, :6].tolist()))
        assert len(memory) == 6  # distinct keys
        assert [memory[k] for k in key_ids[b, 6:].tolist()] == target[b].tolist()


def test_a_compiled_causal_softmax_learns_a_small_recall_task():
    example = load_example("train_recall")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only cost here
    try:
        spec, sizes = example.SPECS["causal softmax"]
        r = example.train(spec, sizes, steps=80, pairs=4, queries=2, keys=8, values=4, batch=32, lr=1e-2)
        first, last = sum(r["losses"][:10]) / 10, sum(r["losses"][-10:]) / 10
        assert last < 0.5 * first, (first, last)
        assert r["accuracy"] > 0.6  # chance is 0.25
    finally:
        torch.set_num_threads(threads)
