"""Metrics of the evaluation stage; each module says which reference implementation it reproduces.

caption_tokenize, bleu, cider, caption: COCO captioning BLEU-1..4 / CIDEr-D (coco-caption);
vqa_normalize, vqa: VQA v2 accuracy (GT-Vision-Lab/VQA); choice: multiple-choice accuracy.
"""
