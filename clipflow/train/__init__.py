"""Training CLIP models on curated subsets with open_clip's own trainer (open_clip_train), DataComp's way."""
