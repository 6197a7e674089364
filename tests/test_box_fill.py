"""Box fills (the paper fills detector boxes): each frame's bounding box of its person pixels."""

import numpy as np
import torch

from debias.training.clips import box_masks, box_masks_torch


def test_box_masks_by_hand_on_numpy_and_torch():
    masks = np.zeros((3, 6, 7), bool)
    masks[0, 1, 2] = masks[0, 3, 5] = True  # two pixels: the box spans rows 1-3, columns 2-5
    masks[1, 4, 0] = True  # one pixel: its own box
    # frame 2: nobody, no box
    expected = np.zeros_like(masks)
    expected[0, 1:4, 2:6] = True
    expected[1, 4, 0] = True
    np.testing.assert_array_equal(box_masks(masks), expected)
    np.testing.assert_array_equal(box_masks_torch(torch.from_numpy(masks)).numpy(), expected)
    # batched (N, T, H, W) as the device renderer calls it
    batched = torch.from_numpy(np.stack([masks, masks[::-1].copy()]))
    np.testing.assert_array_equal(box_masks_torch(batched).numpy(), np.stack([expected, expected[::-1]]))
