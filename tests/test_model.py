import pytest
import torch

import losses
from model import Discriminator, Generator, smooth_flow, warp_image
from utils.fast_conv import SmallOutputConv2d, use_matmul_for_small_convs


@pytest.mark.parametrize('size, d_repeat', [(32, 5), (64, 5), (128, 6)])
def test_shapes_and_ranges_batch_of_one(size, d_repeat):
    torch.manual_seed(0)
    G = Generator(conv_dim=8, c_dim=17, repeat_num=2)
    D = Discriminator(image_size=size, conv_dim=8, c_dim=17, repeat_num=d_repeat)
    x = torch.rand(1, 3, size, size) * 2 - 1
    c = torch.rand(1, 17)
    y, attn, color = G(x, c)
    assert y.shape == (1, 3, size, size) and attn.shape == (1, 1, size, size) and color.shape == y.shape
    assert 0 <= attn.min() and attn.max() <= 1 and -1 <= color.min() and color.max() <= 1
    assert -1 <= y.min() and y.max() <= 1
    src, cls, code = D(y)
    k = size // 2 ** d_repeat
    assert src.shape == (1, 1, k, k) and cls.shape == (1, 17) and code is None


def test_critic_rejects_too_small_images_clearly():
    with pytest.raises(ValueError, match='--d_repeat_num <= 5'):
        Discriminator(image_size=32, repeat_num=6)
    with pytest.raises(ValueError, match='power of two'):
        Discriminator(image_size=96, repeat_num=5)


def test_full_attention_returns_the_input_exactly():
    G = Generator(conv_dim=8, c_dim=5, repeat_num=1)
    heads = G.heads
    G.heads = lambda h: (heads(h)[0], torch.ones_like(h[:, :1]), None)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y, _, _ = G(x, torch.rand(2, 5))
    assert torch.equal(y, x)


@pytest.mark.parametrize('warp', [0, 4])
def test_the_heads_in_one_convolution_equal_each_head_alone(warp):
    """Generator.heads runs the colour, attention and flow heads as one convolution: the same values
    as each head's own module, and each head's weight gets its own gradient."""
    torch.manual_seed(0)
    G = Generator(conv_dim=8, c_dim=3, repeat_num=1, warp=warp)
    if warp:
        torch.nn.init.normal_(G.flow.weight, std=0.1)
    h = torch.randn(2, 8, 16, 16, requires_grad=True)
    color, attn, flow = G.heads(h)
    assert torch.allclose(color, G.color(h), atol=1e-6) and torch.allclose(attn, G.attn(h), atol=1e-6)
    assert (flow is None) == (not warp) and (flow is None or torch.allclose(flow, G.flow(h), atol=1e-6))
    (color.sum() + 2 * attn.sum() + (3 * flow.sum() if warp else 0)).backward()
    grads = [m.weight.grad.clone() for m in (G.color[0], G.attn[0]) + ((G.flow,) if warp else ())]
    G.zero_grad()
    (G.color(h).sum() + 2 * G.attn(h).sum() + (3 * G.flow(h).sum() if warp else 0)).backward()
    for g, m in zip(grads, (G.color[0], G.attn[0]) + ((G.flow,) if warp else ())):
        assert torch.allclose(g, m.weight.grad, rtol=1e-4, atol=1e-5)
    G_plain = Generator(conv_dim=8, c_dim=3, repeat_num=1, attention=False)
    assert G_plain.heads(h)[1:] == (None, None)


def test_instance_norm_uses_each_images_own_statistics_in_train_and_eval():
    torch.manual_seed(0)
    G = Generator(conv_dim=8, c_dim=3, repeat_num=1)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    c = torch.rand(4, 3)
    with torch.no_grad():
        y_train = G(x, c)[0]
        G.eval()
        y_eval = G(x, c)[0]
        y_alone = G(x[2:3], c[2:3])[0]
    assert torch.allclose(y_train, y_eval, atol=1e-6)
    assert torch.allclose(y_alone[0], y_eval[2], atol=1e-5)   # no batch statistics leak between images


def test_condition_changes_output():
    torch.manual_seed(0)
    G = Generator(conv_dim=8, c_dim=3, repeat_num=1)
    x = torch.rand(1, 3, 32, 32)
    assert not torch.allclose(G(x, torch.zeros(1, 3))[0], G(x, torch.ones(1, 3))[0])


def test_ganmut_heads():
    G = Generator(conv_dim=8, c_dim=2, repeat_num=1, attention=False)
    y, attn, color = G(torch.rand(1, 3, 32, 32), torch.rand(1, 2))
    assert attn is None and torch.equal(y, color)
    D = Discriminator(image_size=32, conv_dim=8, c_dim=7, repeat_num=4, code_dim=2)
    src, cls, code = D(y)
    assert cls.shape == (1, 7) and code.shape == (1, 2)


def test_resize_decoder_has_the_same_shapes_and_no_transposed_convs():
    torch.manual_seed(0)
    G = Generator(conv_dim=8, c_dim=4, repeat_num=1, upsample='resize')
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in G.modules())
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in Generator(8, 4, 1).modules()) == 2
    y, attn, _ = G(torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 4))
    assert y.shape == (1, 3, 32, 32) and attn.shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match='--g_upsample'):
        Generator(8, 4, 1, upsample='bilinear')


def test_warp_image_moves_pixels_by_the_flow_in_pixels():
    x = torch.arange(2 * 3 * 8 * 10, dtype=torch.float32).view(2, 3, 8, 10)
    assert torch.allclose(warp_image(x, torch.zeros(2, 2, 8, 10)), x, atol=1e-4)   # zero flow: the identity
    flow = torch.zeros(2, 2, 8, 10)
    flow[:, 0] = 1.0                  # sample one pixel to the right: the image moves left
    flow[1, 1] = -2.0                 # and, for the second image, two pixels up: it moves down
    y = warp_image(x, flow)
    assert torch.allclose(y[0, :, :, :-1], x[0, :, :, 1:])
    assert torch.allclose(y[1, :, 2:, :-1], x[1, :, :-2, 1:])
    assert torch.allclose(y[0, :, :, -1], x[0, :, :, -1])    # border: the edge pixel repeated
    half = warp_image(x, flow * 0.5)  # half a pixel: bilinear, the mean of the two neighbours
    assert torch.allclose(half[0, :, :, :-1], (x[0, :, :, :-1] + x[0, :, :, 1:]) / 2)


def test_smooth_flow_is_constant_within_a_cell_average_and_keeps_a_uniform_flow():
    flow = torch.randn(1, 2, 16, 16)
    assert torch.equal(smooth_flow(flow, 1), flow)
    uniform = torch.full((1, 2, 16, 16), 1.5)
    assert torch.allclose(smooth_flow(uniform, 4), uniform)
    smooth = smooth_flow(flow, 4)
    # single-pixel scatter is gone: neighbouring vectors differ far less than in the raw field
    assert (smooth.diff(dim=-1).abs().mean() < 0.3 * flow.diff(dim=-1).abs().mean())


@pytest.mark.parametrize('cell', [1, 4])
def test_warp_generator_starts_as_the_seed_generator_and_learns_to_move_pixels(cell):
    torch.manual_seed(0)
    G = Generator(conv_dim=8, c_dim=4, repeat_num=1, warp=cell)
    torch.manual_seed(0)
    seed_G = Generator(conv_dim=8, c_dim=4, repeat_num=1)
    assert set(dict(G.named_parameters())) - set(dict(seed_G.named_parameters())) == {'flow.weight'}
    seed_G.load_state_dict({k: v for k, v in G.state_dict().items() if not k.startswith('flow.')})
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    c = torch.rand(2, 4)
    y, attn, color = G(x, c)
    y_seed = seed_G(x, c)[0]
    assert torch.allclose(y, y_seed, atol=1e-6)      # zero flow: the same output
    # a target that is the input moved one pixel: the flow head gets the gradient and its step changes y
    opt = torch.optim.Adam(G.parameters(), 1e-3)
    (G(x, c)[0] - torch.roll(x, 1, dims=-1)).abs().mean().backward()
    assert G.flow.weight.grad.abs().max() > 0
    opt.step()
    assert not torch.allclose(G(x, c)[0], y, atol=1e-4)
    with pytest.raises(ValueError, match='--g_warp'):
        Generator(8, 4, 1, attention=False, warp=4)
    with pytest.raises(ValueError, match='--g_warp'):
        Generator(8, 4, 1, warp=-1)


def test_relative_generator_reads_target_and_target_minus_source():
    """--g_condition relative: the tiled condition is [c, c - c_src]; with the weights of the
    difference channels zeroed it is the target-conditioned generator, and the source's AUs change the output."""
    torch.manual_seed(0)
    G = Generator(conv_dim=8, c_dim=4, repeat_num=1, condition='relative')
    seed_G = Generator(conv_dim=8, c_dim=4, repeat_num=1)
    assert G.main[0].in_channels == 3 + 2 * 4
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    c, c_src = torch.rand(2, 4), torch.rand(2, 4)
    with pytest.raises(ValueError, match='source'):
        G(x, c)
    y = G(x, c, c_src)[0]
    assert (y - G(x, c, 1 - c_src)[0]).abs().mean() > 1e-4
    state = G.state_dict()
    seed_G.load_state_dict({**state, 'main.0.weight': state['main.0.weight'][:, :3 + 4]})
    with torch.no_grad():
        G.main[0].weight[:, 3 + 4:] = 0
    assert torch.allclose(G(x, c, c_src)[0], seed_G(x, c)[0], atol=1e-6)
    assert torch.allclose(G(x, c, 1 - c_src)[0], seed_G(x, c)[0], atol=1e-6)
    # the difference channels are c - c_src: only they see the source
    with torch.no_grad():
        G.main[0].weight[:, 3:3 + 4] = 0
        G.main[0].weight[:, 3 + 4:] = state['main.0.weight'][:, 3 + 4:]
    assert torch.allclose(G(x, c, c_src)[0], G(x, c + 0.3, c_src + 0.3)[0], atol=1e-5)
    with pytest.raises(ValueError, match='--g_condition'):
        Generator(8, 4, 1, condition='source')


@pytest.mark.parametrize('layer,features', [(1, (8, 32, 32)), (2, (16, 16, 16))])
def test_local_head_scores_are_the_mean_of_both_heads(layer, features):
    """--d_local_head N: the realism output is (mean of the last layer's scores, mean of a 3x3
    head's scores on layer N's features); the other layers start as without the head."""
    torch.manual_seed(3)
    plain = Discriminator(image_size=64, conv_dim=8, c_dim=5, repeat_num=5)
    torch.manual_seed(3)
    D = Discriminator(image_size=64, conv_dim=8, c_dim=5, repeat_num=5, local_head=layer)
    for name, t in plain.state_dict().items():
        assert torch.equal(t, D.state_dict()[name])
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        src, cls, _ = D(x)
        h_local = D.main[:2 * layer](x)               # N (conv, LeakyReLU) layers
        assert h_local.shape[1:] == features
        expected = torch.stack([plain(x)[0].mean((1, 2, 3)), D.local(h_local).mean((1, 2, 3))], 1)
        assert src.shape == (4, 2, 1, 1)
        assert torch.allclose(src.flatten(1), expected, atol=1e-6)
        assert torch.equal(cls, plain(x)[1])
        assert expected[:, 1].abs().max() > 0
    with pytest.raises(ValueError, match='--d_local_head'):
        Discriminator(image_size=64, conv_dim=8, c_dim=5, repeat_num=5, local_head=5)


@pytest.mark.parametrize('size,d_repeat,memory_format,local_head', [
    (64, 5, torch.channels_last, 0), (32, 4, torch.contiguous_format, 0), (128, 6, torch.channels_last, 0),
    (64, 5, torch.channels_last, 1), (64, 5, torch.channels_last, 2)])
def test_small_convs_as_matmul_and_the_written_out_input_gradient(size, d_repeat, memory_format, local_head):
    """The critic's fast CPU paths compute the same function: its small-output convolutions
    as matrix products (outputs, input and weight gradients), and the input gradient written
    out as transposed convolutions against autograd's double backward, including the weight
    gradient of the gradient penalty taken through it (with --d_local_head: through both heads)."""
    torch.manual_seed(0)
    D = Discriminator(image_size=size, conv_dim=8, c_dim=5, repeat_num=d_repeat,
                      local_head=local_head).to(memory_format=memory_format)
    assert isinstance(D.main[-2], SmallOutputConv2d)
    x = torch.randn(3, 3, size, size).contiguous(memory_format=memory_format).requires_grad_(True)
    results = {}
    for as_matmul in (False, True):
        use_matmul_for_small_convs(D, as_matmul)
        D.zero_grad()
        x.grad = None
        src, cls, _ = D(x)
        (src.sum() + (cls * torch.arange(5.0)).sum()).backward()
        results[as_matmul] = (src.detach(), cls.detach(), x.grad.clone(), [p.grad.clone() for p in D.parameters()])
    for a, b in zip(results[False][:3], results[True][:3]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(results[False][3], results[True][3]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * a.abs().max().item())
    # the gradient penalty: autograd's double backward against the written-out gradient
    use_matmul_for_small_convs(D, True)
    out = D(x)[0]
    grad_ref, = torch.autograd.grad(out.sum(), x, create_graph=True)
    weights = [p for n, p in D.named_parameters() if n.endswith('weight') and not n.startswith('cls')]
    ref = torch.autograd.grad(losses.penalty_of_gradient(grad_ref), weights)
    grad = D.realism_input_gradient(x.detach())
    assert torch.allclose(grad, grad_ref, atol=1e-6 * grad_ref.abs().max().item())
    got = torch.autograd.grad(losses.penalty_of_gradient(grad), weights)
    for a, b in zip(ref, got):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * a.abs().max().item())
    assert all(a.abs().max() > 0 for a in ref)
