"""The core on a GPU (run by hand on a CUDA machine; needs only torch and this repository).

    python tests/bench/core_gpu.py

1. Same results on CUDA as on CPU: ``step_index``, ``mine_echo_clips`` (paper-sized batch) and ``token_entropy``
   (fp32 and bf16 logits).
2. Mining time on the GPU (1024 rollouts x 4096 tokens), for reference against the CPU figure.
3. ``token_entropy`` on 8192 x 152064 bf16 logits: peak extra GPU memory chunked vs in one piece
   (``torch.cuda.max_memory_allocated``), and its time against the log-prob computation it rides along with
   (``log_softmax`` + gather of the sampled tokens, what EasyR1's fallback does), in the same run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mining import VOCAB, make_batch  # noqa: E402

from echovl.clip import mine_echo_clips  # noqa: E402
from echovl.entropy import DEFAULT_CHUNK_SIZE, token_entropy  # noqa: E402
from echovl.steps import step_index  # noqa: E402


def _cuda_time(fn, repeats: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def check_same_results() -> None:
    inputs = make_batch(128, 8, 4096)
    ids, mask, is_delim, entropy, text_mask, verified, group = inputs
    steps_cpu = step_index(ids, mask, is_delim)
    clips_cpu = mine_echo_clips(entropy, steps_cpu, text_mask, verified, group)
    cuda = [t.cuda() for t in inputs]
    steps_gpu = step_index(cuda[0], cuda[1], cuda[2])
    clips_gpu = mine_echo_clips(cuda[3], steps_gpu, cuda[4], cuda[5], cuda[6])
    assert torch.equal(steps_cpu, steps_gpu.cpu()), "step_index differs between CPU and CUDA"
    for field in ("group", "row", "step", "length"):
        assert torch.equal(getattr(clips_cpu, field), getattr(clips_gpu, field).cpu()), f"clips.{field} differs"
    assert torch.equal(clips_cpu.mask, clips_gpu.mask.cpu()), "clips.mask differs"
    torch.testing.assert_close(clips_cpu.step_entropy, clips_gpu.step_entropy.cpu(), rtol=1e-6, atol=1e-6)
    for dtype in (torch.float32, torch.bfloat16):
        logits = (torch.randn(300, 4099) * 4).to(dtype)
        exact = torch.logsumexp(logits.double(), -1) - (torch.softmax(logits.double(), -1) * logits.double()).sum(-1)
        got = token_entropy(logits.cuda(), chunk_size=64).cpu().double()
        err = (got - exact).abs().max().item()
        assert err < 1e-4, f"token_entropy on CUDA ({dtype}) is off by {err}"
        print(f"  token_entropy CUDA {dtype}: max abs error vs float64 closed form {err:.2e}")
    print(f"  step_index and mine_echo_clips: CUDA == CPU on 1024 x 4096 ({len(clips_cpu)} clips)")


def mining_time() -> None:
    ids, mask, is_delim, entropy, text_mask, verified, group = (t.cuda() for t in make_batch(128, 8, 4096))
    t_steps = _cuda_time(lambda: step_index(ids, mask, is_delim))
    steps = step_index(ids, mask, is_delim)
    t_mine = _cuda_time(lambda: mine_echo_clips(entropy, steps, text_mask, verified, group))
    print(f"  step_index {t_steps * 1e3:.1f} ms, mine_echo_clips {t_mine * 1e3:.1f} ms")


def entropy_memory_and_time(rows: int = 8192) -> None:
    logits = torch.randn(rows, VOCAB, device="cuda", dtype=torch.bfloat16)
    labels = torch.randint(0, VOCAB, (rows,), device="cuda")
    logits_mb = logits.numel() * 2 / 2**20
    extra = {}
    for name, chunk in (("chunked", DEFAULT_CHUNK_SIZE), ("unchunked", rows)):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        token_entropy(logits, chunk_size=chunk)
        torch.cuda.synchronize()
        extra[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
    print(
        f"  logits {logits_mb:.0f} MB; extra peak: chunked +{extra['chunked']:.0f} MB "
        f"({100 * extra['chunked'] / logits_mb:.1f}% of the logits; target <= 10%), "
        f"unchunked +{extra['unchunked']:.0f} MB; ratio {extra['chunked'] / extra['unchunked']:.3f}"
    )

    def log_probs():  # the log-prob computation of the old-log-prob pass, in row chunks like EasyR1's fallback
        out = torch.empty(rows, device="cuda")
        for start in range(0, rows, 1024):
            part = logits[start : start + 1024].float().log_softmax(-1)
            out[start : start + 1024] = part.gather(-1, labels[start : start + 1024, None]).squeeze(-1)
        return out

    t_lp = _cuda_time(log_probs)
    t_ent = _cuda_time(lambda: token_entropy(logits))
    print(
        f"  log-probs {t_lp * 1e3:.1f} ms, token_entropy {t_ent * 1e3:.1f} ms: "
        f"entropy / log-probs = {t_ent / t_lp:.2f} (of the logits' share of a forward only)"
    )


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    print(f"device: {torch.cuda.get_device_name()} (torch {torch.__version__})")
    print("1. CUDA vs CPU results")
    check_same_results()
    print("2. mining on the GPU, 128 x 8 rollouts x 4096 tokens")
    mining_time()
    print(f"3. token_entropy on 8192 x {VOCAB} bf16 logits")
    entropy_memory_and_time()


if __name__ == "__main__":
    main()
