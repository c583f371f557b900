"""How much would a CUDA graph save per training step of the final step? Timing only.

    python .dev/graph_step.py [--device cuda] [--batches 1875]

Eager: the trainer's own loop body (trainer.data.batches + forward, loss, backward, SGD step),
as train_one_epoch runs it. Graph: the same model/optimizer step captured once in a CUDA graph
(PyTorch's whole-network capture recipe) and replayed per batch, the batches still made and
augmented eagerly by trainer.data.batches. Fixed learning rate in both (OneCycle would need the
learning rate as a device tensor inside the graph). Prints ms per step and the ratio.
"""
import argparse, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch
import torch.nn.functional as F
from trainer.data import batches, read_mnist_folder
from trainer.steps import get_step
from trainer.train import make_optimizer

p = argparse.ArgumentParser()
p.add_argument("--device", default="cuda")
p.add_argument("--batches", type=int, default=1875)
p.add_argument("--data-dir", default=".dev/mnist")
a = p.parse_args()
dev = torch.device(a.device)
step = get_step("scheduler"); r = step.recipe
train = read_mnist_folder(Path(a.data_dir)).train.head(a.batches * r.batch_size).to(dev)

def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()

def fresh():
    torch.manual_seed(1)
    model = step.build().to(dev).train()
    return model, make_optimizer(model, r)

def eager_epoch(model, opt):
    losses = []
    for x, y in batches(train, r.batch_size, True, r.rotation, r.translate):
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = F.cross_entropy(out, y, label_smoothing=r.label_smoothing)
        loss.backward(); opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)

def timed(f, *args):
    sync(); s = time.perf_counter(); out = f(*args); sync()
    return time.perf_counter() - s, out

model, opt = fresh()
eager_epoch(model, opt)  # warm-up epoch (cuDNN, allocator)
t_eager, l_eager = timed(eager_epoch, model, opt)
n = len(l_eager)
print(f"eager: {n} steps in {t_eager:.2f} s = {1e3 * t_eager / n:.3f} ms/step; "
      f"mean loss of last 200 {l_eager[-200:].mean().item():.4f}", flush=True)

if dev.type == "cuda":
    model, opt = fresh()
    sx = torch.zeros(r.batch_size, 1, 28, 28, device=dev)
    sy = torch.zeros(r.batch_size, dtype=torch.long, device=dev)
    x0, y0 = next(batches(train, r.batch_size, True, r.rotation, r.translate))
    sx.copy_(x0); sy.copy_(y0)
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(sx), sy, label_smoothing=r.label_smoothing).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(g):
        sloss = F.cross_entropy(model(sx), sy, label_smoothing=r.label_smoothing)
        sloss.backward()
        opt.step()

    def graph_epoch():
        losses = []
        for x, y in batches(train, r.batch_size, True, r.rotation, r.translate):
            sx.copy_(x); sy.copy_(y); g.replay()
            losses.append(sloss.detach().clone())
        return torch.stack(losses)

    graph_epoch()  # warm-up epoch
    t_graph, l_graph = timed(graph_epoch)
    print(f"graph: {n} steps in {t_graph:.2f} s = {1e3 * t_graph / n:.3f} ms/step; "
          f"mean loss of last 200 {l_graph[-200:].mean().item():.4f}", flush=True)
    def batches_only():
        k = 0
        for x, y in batches(train, r.batch_size, True, r.rotation, r.translate):
            sx.copy_(x); k += 1
        return k
    t_b, _ = timed(batches_only)
    print(f"batches alone (augmentation): {1e3 * t_b / n:.3f} ms/step")
    print(f"ratio: {t_eager / t_graph:.2f}")
