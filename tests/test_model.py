import pytest
import torch

from altgrad.training.model import GPT, GPTConfig

TINY = GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=4, vocab_size=11)


def make(config=TINY, seed=0):
    torch.manual_seed(seed)
    return GPT(config)


def test_shapes_and_loss():
    model = make()
    idx = torch.randint(0, 11, (3, 4))
    logits, loss = model(idx)
    assert logits.shape == (3, 4, 11)
    assert loss is None
    logits, loss = model(idx, targets=idx)
    assert loss.shape == () and torch.isfinite(loss)
    # shorter sequences are fine
    logits, _ = model(idx[:, :2])
    assert logits.shape == (3, 2, 11)


def test_block_size_check():
    model = make()
    with pytest.raises(ValueError, match="exceeds the model's block_size 4"):
        model(torch.zeros(1, 5, dtype=torch.long))


def test_n_head_must_divide_n_embd():
    with pytest.raises(ValueError, match="divisible"):
        GPT(GPTConfig(n_layer=1, n_head=3, n_embd=8, block_size=4, vocab_size=11))


def test_causal():
    model = make().eval()
    idx = torch.randint(0, 11, (2, 4))
    changed = idx.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 11
    before, _ = model(idx)
    after, _ = model(changed)
    torch.testing.assert_close(before[:, :3], after[:, :3], rtol=0, atol=0)
    assert not torch.equal(before[:, 3], after[:, 3])


def test_weight_tying():
    model = make()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_linear_names_are_stable():
    names = {n for n, m in make().named_modules() if isinstance(m, torch.nn.Linear)}
    expected = {"lm_head"}
    for i in range(TINY.n_layer):
        for leaf in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            expected.add(f"transformer.h.{i}.{leaf}")
    assert names == expected


@pytest.mark.parametrize("bias", [False, True])
def test_num_params_hand_count(bias):
    c = GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=4, vocab_size=11, bias=bias)
    model = make(c)
    d, b = c.n_embd, int(bias)
    ln = d + b * d  # weight (+ bias)
    attn = d * 3 * d + b * 3 * d + d * d + b * d  # c_attn, c_proj
    mlp = d * 4 * d + b * 4 * d + 4 * d * d + b * d  # c_fc, c_proj
    per_block = 2 * ln + attn + mlp
    non_embedding = c.n_layer * per_block + ln  # + ln_f; lm_head is tied to wte
    embeddings = c.vocab_size * d + c.block_size * d  # wte, wpe
    assert model.num_params() == non_embedding
    assert model.num_params(non_embedding=False) == non_embedding + embeddings
    unique = {id(p): p for p in model.parameters()}
    assert model.num_params(non_embedding=False) == sum(p.numel() for p in unique.values())


def test_reference_model_param_count():
    # 6 layers x 384 wide, no biases: 6 * (2*384 + 12*384^2) + 384 = 10,621,824
    with torch.device("meta"):
        model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=50257))
    assert model.num_params() == 10_621_824
    assert model.num_params(non_embedding=False) == 10_621_824 + 50257 * 384 + 256 * 384


def test_same_seed_same_init():
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_init_statistics():
    c = GPTConfig(n_layer=4, n_head=4, n_embd=64, block_size=8, vocab_size=100)
    model = make(c)
    h = model.transformer.h[0]
    assert h.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert h.mlp.c_proj.weight.std().item() == pytest.approx(0.02 / (2 * 4) ** 0.5, rel=0.1)


def test_adamw_reduces_loss_on_fixed_batch():
    c = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    model = make(c, seed=1)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 50, (4, 17), generator=g)
    x, y = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    _, first = model(x, y)
    for _ in range(30):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, last = model(x, y)
    assert first.item() == pytest.approx(torch.log(torch.tensor(50.0)).item(), rel=0.05)
    assert last.item() < 0.7 * first.item()
