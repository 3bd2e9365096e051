"""Model components of Mask2Former + RankSeg (backbones, pixel decoder, transformer decoder, heads)."""
