"""Special tokens and their fixed ids (DESIGN.md 2). The tokenizer is trained so these hold."""

PAD, BOS, EOS, UNK, IMAGE, END_IMAGE, END_DOC = "<pad>", "<s>", "</s>", "<unk>", "<image>", "</image>", "</d>"

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3
IMAGE_ID = 4
END_IMAGE_ID = 5
END_DOC_ID = 6

SPECIAL_TOKENS = {
    PAD: PAD_ID,
    BOS: BOS_ID,
    EOS: EOS_ID,
    UNK: UNK_ID,
    IMAGE: IMAGE_ID,
    END_IMAGE: END_IMAGE_ID,
    END_DOC: END_DOC_ID,
}
# Given to sentencepiece as user-defined symbols (pad/bos/eos/unk use its own *_id options).
USER_DEFINED_SYMBOLS = [IMAGE, END_IMAGE, END_DOC]
