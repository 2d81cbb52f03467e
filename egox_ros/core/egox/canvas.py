"""The EgoX canvas in latent space (../shared/docs/egox-method.md, section 3).

Side by side, width-wise, [exo | ego]; channels of the transformer input, per side:

    16 "noisy":     exo: the clean exo latent x_0 (written back every step) | ego: the noisy ego latent z_t
     4 mask:        exo: 1 on the first latent frame, 0 after (as Wan I2V)  | ego: 0
    16 condition:   exo: x_0                                                | ego: p_0, the latent of the ego prior

All tensors are (B, C, F_latent, h, w) with h, w in latent pixels (image / 8).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MASK_CHANNELS = 4


@dataclass(frozen=True)
class LatentCanvas:
    """Width of the two halves in latent pixels; the exo half comes first."""
    exo_width: int
    ego_width: int

    def join(self, exo: torch.Tensor, ego: torch.Tensor) -> torch.Tensor:
        """[exo | ego] along the width; both (B, C, F, h, w_side)."""
        if exo.shape[-1] != self.exo_width or ego.shape[-1] != self.ego_width or exo.shape[:-1] != ego.shape[:-1]:
            raise ValueError(f"canvas halves must be (..., {self.exo_width}) and (..., {self.ego_width}) with equal "
                             f"leading dims, got {tuple(exo.shape)} and {tuple(ego.shape)}")
        return torch.cat([exo, ego], dim=-1)

    def exo(self, canvas: torch.Tensor) -> torch.Tensor:
        return canvas[..., :self.exo_width]

    def ego(self, canvas: torch.Tensor) -> torch.Tensor:
        return canvas[..., self.exo_width:]

    def mask(self, like: torch.Tensor) -> torch.Tensor:
        """(B, 4, F, h, w_exo + w_ego) in like's dtype and device: 1 on the exo half of latent frame 0, else 0."""
        b, _, f, h, _ = like.shape
        mask = like.new_zeros(b, MASK_CHANNELS, f, h, self.exo_width + self.ego_width)
        mask[:, :, 0, :, :self.exo_width] = 1
        return mask

    def condition(self, exo_latent: torch.Tensor, prior_latent: torch.Tensor) -> torch.Tensor:
        """The 20 channels that stay fixed through sampling: the mask, then [x_0 | p_0]."""
        joined = self.join(exo_latent, prior_latent)
        return torch.cat([self.mask(joined), joined], dim=1)

    def model_input(self, canvas_latents: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """(B, 36, F, h, w): the 16 canvas channels [x_0 | z_t] then the condition."""
        return torch.cat([canvas_latents, condition], dim=1)

    def keep_exo_clean(self, velocity: torch.Tensor) -> torch.Tensor:
        """Zero the exo half of the predicted velocity (in place; returns it)."""
        velocity[..., :self.exo_width] = 0
        return velocity
