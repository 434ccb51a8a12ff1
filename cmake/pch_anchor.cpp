// Anchor translation unit for the <torch/torch.h> precompiled header.
