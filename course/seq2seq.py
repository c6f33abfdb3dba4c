"""Bahdanau et al. 2015 in miniature (notebook 01): additive attention in a GRU encoder-decoder that reverses
token sequences, against the same model with one fixed context vector (the bottleneck attention removed).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import fitting


@contextlib.contextmanager
def _one_thread():
    """Run tiny recurrent steps on one thread: with two, thread hand-offs cost more than the arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class AdditiveAttention(nn.Module):
    """Bahdanau et al. 2015: e_ij = v^T tanh(W s_{i-1} + U h_j), alpha_ij = softmax_j(e_ij), c_i = sum_j alpha_ij h_j.

    Eqs. 5-6 with the alignment model of appendix A.1.2. With ``values`` given, the context averages
    them instead of the annotations, c_i = sum_j alpha_ij v_j: h_j is then the key and v_j the value.
    Returns c_i (B, D_v) and alpha_i (B, S).
    """

    def __init__(self, state_dim: int, annotation_dim: int, hidden_dim: int):
        super().__init__()
        self.W = nn.Linear(state_dim, hidden_dim, bias=False)
        self.U = nn.Linear(annotation_dim, hidden_dim)
        self.v = nn.Linear(hidden_dim, 1, bias=False)

    def forward(self, s_prev: torch.Tensor, h: torch.Tensor, values: torch.Tensor | None = None,
                U_h: torch.Tensor | None = None):
        U_h = self.U(h) if U_h is None else U_h  # the h_j part does not change with i: precompute it
        energy = self.v(torch.tanh(self.W(s_prev)[:, None] + U_h)).squeeze(-1)  # e_ij, (B, S)
        alpha = torch.softmax(energy, dim=-1)
        return torch.bmm(alpha[:, None], h if values is None else values)[:, 0], alpha


class Seq2Seq(nn.Module):
    """A GRU encoder-decoder on token sequences (after Bahdanau et al. 2015, appendix A).

    The encoder is a bidirectional GRU whose states h_j are the annotations. With ``attention=True``
    the decoder reads a new context at every step, c_i = sum_j alpha_ij v_j, with weights scored on the
    annotations h_j (the keys) and averaging the embedded inputs v_j = E x_j (the values): x_j sits in
    v_j only, so the weights show where each output reads from. With ``attention=False`` it reads one
    fixed context c = [forward h_S; backward h_1] at every step, the bottleneck of Cho et al. 2014 and
    Sutskever et al. 2014. The decoder is s_i = GRU(s_{i-1}, c_i), output softmax(W_y [s_i; c_i]):
    for a task whose output length is known, it needs no previous output, hence no teacher forcing.
    """

    def __init__(self, vocab_size: int = 10, embed_dim: int = 16, hidden_dim: int = 64, attention: bool = True,
                 seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.config = dict(vocab_size=vocab_size, embed_dim=embed_dim, hidden_dim=hidden_dim, attention=attention)
        self.vocab_size, self.use_attention = vocab_size, attention
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.encoder = nn.GRU(embed_dim, hidden_dim // 2, batch_first=True, bidirectional=True)
        self.init_state = nn.Linear(hidden_dim, hidden_dim)
        self.attend = AdditiveAttention(hidden_dim, hidden_dim, hidden_dim) if attention else None
        context_dim = embed_dim if attention else hidden_dim
        self.decoder = nn.GRUCell(context_dim, hidden_dim)
        self.readout = nn.Linear(hidden_dim + context_dim, vocab_size)

    def encode(self, src: torch.Tensor):
        h, last = self.encoder(self.embed(src))  # h: (B, S, hidden), last: (2, B, hidden/2)
        summary = torch.cat([last[0], last[1]], dim=-1)  # forward state after x_S, backward after x_1
        return h, summary

    def forward(self, src: torch.Tensor, length: int | None = None):
        """Logits (B, T, V) and attention weights alpha (B, T, S) for T = ``length`` output steps (default S)."""
        if src.dim() != 2 or src.is_floating_point():
            raise ValueError(f"src must be a (batch, length) tensor of token ids, got {tuple(src.shape)} {src.dtype}")
        with _one_thread():
            return self._decode(src, length)

    def _decode(self, src, length):
        h, summary = self.encode(src)
        s = torch.tanh(self.init_state(summary))  # s_0
        values = self.embed(src)  # v_j = E x_j
        U_h = self.attend.U(h) if self.use_attention else None
        states, contexts, alphas = [], [], []
        for _ in range(length or src.shape[1]):
            if self.use_attention:
                c, alpha = self.attend(s, h, values, U_h)  # c_i from s_{i-1}
                alphas.append(alpha)
            else:
                c = summary
            s = self.decoder(c, s)
            states.append(s), contexts.append(c)
        logits = self.readout(torch.cat([torch.stack(states, 1), torch.stack(contexts, 1)], dim=-1))
        weights = torch.stack(alphas, 1) if alphas else torch.zeros(src.shape[0], len(states), src.shape[1])
        return logits, weights


def reversal_batch(batch_size: int, length: int, vocab_size: int = 10, generator: torch.Generator | None = None):
    """Random digit sequences x, shape (B, length), and their reversals y = x[::-1]."""
    src = torch.randint(0, vocab_size, (batch_size, length), generator=generator)
    return src, src.flip(1)


def train_seq2seq(model: Seq2Seq, steps: int = 500, lengths: tuple[int, int] = (3, 12), batch_size: int = 64,
                  lr: float = 1e-2, seed: int = 0, progress: bool = True, description: str | None = None):
    """Train on sequence reversal: cross-entropy, Adam with a one-cycle learning rate, one random length per batch.

    Returns the loss of every step.
    """
    with _one_thread():
        return _train_seq2seq(model, steps, lengths, batch_size, lr, seed, progress, description)


def _train_seq2seq(model, steps, lengths, batch_size, lr, seed, progress, description):
    gen = torch.Generator().manual_seed(seed)
    model.train()

    def batch_loss(step):
        length = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=gen))
        src, target = reversal_batch(batch_size, length, model.vocab_size, gen)
        logits, _ = model(src)
        loss = F.cross_entropy(logits.reshape(-1, model.vocab_size), target.reshape(-1))
        return loss, {"loss": f"{loss.item():.3f}"}

    losses = fitting.fit(model.parameters(), batch_loss, steps, lr, optimizer="adam", lr_schedule="onecycle",
                         pct_start=0.2, clip_grad_norm=1.0, progress=progress, mininterval=0.5, to_stdout=False,
                         desc=description or ("with attention" if model.use_attention else "fixed context"))
    model.eval()
    return losses


@torch.no_grad()
def accuracy_by_length(model: Seq2Seq, lengths: Sequence[int], n: int = 500, seed: int = 1) -> dict[int, float]:
    """Fraction of output digits right (the most likely digit at each step), per input length."""
    gen = torch.Generator().manual_seed(seed)
    accuracy = {}
    with _one_thread():
        for length in lengths:
            src, target = reversal_batch(n, length, model.vocab_size, gen)
            logits, _ = model(src)
            accuracy[int(length)] = (logits.argmax(-1) == target).float().mean().item()
    return accuracy
