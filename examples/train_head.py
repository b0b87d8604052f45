"""Train a small embedding network with an ArcFace head on synthetic identities and print
its figures. The quick start's stand-in until `margin-softmax compare` lands."""

import torch

import margin_softmax as ms


def main() -> None:
    torch.manual_seed(0)
    num_classes, dim, per_class = 20, 32, 40
    centres = torch.randn(num_classes, dim)
    labels = torch.arange(num_classes).repeat_interleave(per_class)  # (N,)
    inputs = centres[labels] + 0.8 * torch.randn(labels.shape[0], dim)  # (N, dim)
    net = torch.nn.Sequential(torch.nn.Linear(dim, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    head = ms.ArcFace(16, num_classes, margin=0.2, scale=30.0)
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=1e-2)
    for epoch in range(30):
        loss, prec1 = head.loss_and_accuracy(net(inputs), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if epoch % 5 == 0 or epoch == 29:
            print(f"epoch {epoch:2d}  loss {loss.item():7.3f}  top-1 {prec1:5.1f}%")


if __name__ == "__main__":
    main()
