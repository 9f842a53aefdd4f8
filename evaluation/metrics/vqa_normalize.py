"""VQA answer normalization exactly as the official VQA evaluation (vqaEval.py) does it.

Source of truth: GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py (`processPunctuation`
then `processDigitArticle`). Reproduced on purpose, including its quirks, so our numbers equal the
official ones:

1. punctuation: for each character of `; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`: if it appears
   next to a space in the (original) answer, or if the answer contains a comma between two digits
   anywhere ("1,000"), the character is deleted; otherwise it is replaced by a space. So "1,000" ->
   "1000", "yes!" -> "yes " and "t-shirt" -> "t shirt", but "yes, sir" -> "yes sir". Apostrophes,
   colons, "*", "#", "$", "%" and "&" are kept.
2. periods: a "." not followed by a digit is deleted ("a dog." -> "a dog", "3.5" stays, "5." -> "5").
   (The official pattern `(?!<=\\d)(\\.)(?!\\d)` meant a look-behind but is a look-ahead that never
   fires, so only the "not followed by a digit" part acts; it is also called with re.UNICODE in the
   `count` position, so at most 32 periods are deleted. Both are reproduced.)
3. words: lowercase, split on whitespace; number words "none"/"zero".."ten" -> "0".."10"; the
   articles "a", "an", "the" are dropped; words in the official contraction table are rewritten
   ("dont" -> "don't"); joined with single spaces.
"""

from __future__ import annotations

import re

# In the official order (the order does not change the result).
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_OFFICIAL_PERIOD_SUB_COUNT = 32  # re.UNICODE (== 32) passed as `count` in the official code

NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# The official table, verbatim (including entries that can never match after lowercasing, like
# "Im", and the odd "somebody'd" -> "somebodyd").
CONTRACTIONS = {
    "'ow'sat": "'ow's'at",
    "'ows'at": "'ow's'at",
    "I'dve": "I'd've",
    "Id've": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldn'tve": "couldn't've",
    "couldnt": "couldn't",
    "couldnt've": "couldn't've",
    "couldve": "could've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadn'tve": "hadn't've",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "he'dve": "he'd've",
    "hed": "he'd",
    "hed've": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "isnt": "isn't",
    "it'dve": "it'd've",
    "itd": "it'd",
    "itd've": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightn'tve": "mightn't've",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "shant": "shan't",
    "she'dve": "she'd've",
    "she's": "she's",
    "shed've": "she'd've",
    "shouldn'tve": "shouldn't've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldve": "should've",
    "somebody'd": "somebodyd",
    "somebody'dve": "somebody'd've",
    "somebodyd've": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someone'dve": "someone'd've",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "something'dve": "something'd've",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "there'dve": "there'd've",
    "thered": "there'd",
    "thered've": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "they'dve": "they'd've",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "we'dve": "we'd've",
    "wed've": "we'd've",
    "werent": "weren't",
    "weve": "we've",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "who'dve": "who'd've",
    "whod": "who'd",
    "whod've": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldn'tve": "wouldn't've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldve": "would've",
    "y'all'dve": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'allll": "y'all'll",
    "yall": "y'all",
    "yall'd've": "y'all'd've",
    "yall'll": "y'all'll",
    "you'dve": "you'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}


def process_punctuation(text: str) -> str:
    """Step 1 and 2 of the module docstring (the official `processPunctuation`)."""
    delete_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for p in _PUNCTUATION:
        # The test looks at the original text, the replacement acts on the text processed so far.
        if delete_all or (p + " " in text or " " + p in text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_OFFICIAL_PERIOD_SUB_COUNT)


def process_digits_articles(text: str) -> str:
    """Step 3 of the module docstring (the official `processDigitArticle`)."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str) -> str:
    """An answer as the official evaluation compares it (when the answers of a question differ)."""
    return process_digits_articles(process_punctuation(text))


def strip_answer(text: str) -> str:
    """The only processing the official code always applies: newlines/tabs to spaces, then strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()
