/*
 * tokenizer.h - the SentencePiece-style (BPE with scores and byte fallback)
 * tokenizer of the text-generation plugin, read from GGUF metadata.
 *
 * The vocabulary comes from the tokenizer.ggml.* keys of a GGUF file (ggml
 * docs/gguf.md, "Tokenizer"): the token texts, their scores and types, the
 * special token ids and the add_bos / add_eos / add_space_prefix flags.
 * Only tokenizer.ggml.model = "llama" (SentencePiece BPE) is implemented.
 * Encoding and decoding reproduce llama.cpp's SPM tokenizer (the reference
 * the shared test vectors were made with), including its less obvious
 * rules: user-defined tokens are split out of the text even when special
 * tokens are not parsed, a space prefix is added to each text fragment that
 * follows a special token, and control/unknown tokens render as empty text.
 *
 * Thread-safety: a velo_tokenizer is immutable after velo_tokenizer_load;
 * every function below may be called from any number of threads at once.
 * The tokenizer copies what it needs: the GGUF file may be closed after
 * loading.
 */
#ifndef VELO_TEXTGEN_TOKENIZER_H
#define VELO_TEXTGEN_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "velo/gguf.h"
#include "velo/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct velo_tokenizer velo_tokenizer;

/* Token types, numbered as in tokenizer.ggml.token_type (llama.cpp's
 * llama_token_type).  Type 0 ("undefined") is rejected at load. */
typedef enum velo_token_type {
  VELO_TOKEN_NORMAL = 1,
  VELO_TOKEN_UNKNOWN = 2,
  VELO_TOKEN_CONTROL = 3,
  VELO_TOKEN_USER_DEFINED = 4,
  VELO_TOKEN_UNUSED = 5,
  VELO_TOKEN_BYTE = 6
} velo_token_type;

/* Reads the tokenizer of the open GGUF file g through the host's reader api.
 *
 * Keys: tokenizer.ggml.model (must be "llama"; anything else, "gpt2" or
 * "bert" included, is UNIMPLEMENTED with the model's name), .tokens
 * (required, string array), .scores (float array; absent = all 0), and
 * .token_type (integer array; absent = all normal), .bos_token_id /
 * .eos_token_id / .unknown_token_id / .padding_token_id / .eot_token_id /
 * .eom_token_id (absent = llama.cpp's SentencePiece defaults 1 / 2 / 0 /
 * none / none / none; the value 0xFFFFFFFF or -1 also means "use the
 * default"), .add_bos_token (default true), .add_eos_token (default false),
 * .add_space_prefix (default true).
 *
 * Validation, each INVALID_ARGUMENT with a message naming the key: missing
 * tokens, wrong value types, arrays whose length differs from the token
 * count, an empty vocabulary or one of more than INT32_MAX tokens, a token
 * type outside 1..6, a NaN score, a byte token whose text is not <0xXX>, a
 * special token id outside 0..n_vocab-1, add_bos/add_eos set while the
 * vocabulary has no BOS/EOS token.  RESOURCE_EXHAUSTED if memory runs out.
 *
 * On success *out is a new tokenizer owned by the caller (free it with
 * velo_tokenizer_free); g may be closed at once.  On failure *out is
 * untouched.  g must not be closed concurrently with this call. */
velo_status velo_tokenizer_load(const velo_gguf_api *api, const velo_gguf *g,
                                velo_tokenizer **out, velo_error *err);

/* Frees the tokenizer.  NULL is a no-op.  No other call may be using it. */
void velo_tokenizer_free(velo_tokenizer *tok);

/* Encodes text[0..len) (UTF-8, need not be NUL-terminated, may contain NUL)
 * into token ids, as llama.cpp's llama_tokenize(add_special,
 * parse_special = false) does:
 *   - control and unknown tokens written in the text are NOT recognised
 *     ("<s>" is tokenized as the characters '<', 's', '>');
 *   - user-defined tokens (type 4) ARE recognised wherever their text
 *     occurs, longest first, and the text fragments between them are
 *     tokenized separately;
 *   - each fragment that starts the text or follows a recognised token gets
 *     a leading space when add_space_prefix is set; spaces become U+2581;
 *   - the fragment is BPE-merged (highest score first, leftmost on ties);
 *     characters without a token fall back to <0xXX> byte tokens (or the
 *     unknown token if the vocabulary has no byte tokens).
 * add_special: prepend BOS if add_bos, append EOS if add_eos.  Empty text
 * gives no tokens apart from those.
 *
 * On success *ids is a malloc'd array of *n_ids ids owned by the caller
 * (free() it); when *n_ids is 0, *ids may be NULL.  Errors:
 * INVALID_ARGUMENT for text that is not valid UTF-8 (the message gives the
 * byte offset of the first bad byte; overlong forms, surrogates and code
 * points above U+10FFFF are invalid), or longer than 2^29 bytes, or with a
 * character that has no token, no byte token and no unknown token;
 * RESOURCE_EXHAUSTED if memory runs out.  On failure *ids and *n_ids are
 * untouched.  Cost: O(n log n) in the text length.  Thread-safe. */
velo_status velo_tokenizer_encode(const velo_tokenizer *tok, const char *text,
                                  size_t len, bool add_special, int32_t **ids,
                                  size_t *n_ids, velo_error *err);

/* The bytes that token id contributes to generated text, as llama.cpp's
 * llama_token_to_piece(special) gives them: normal tokens with U+2581
 * turned into ' ' (a piece keeps its leading space), byte tokens <0xXX> as
 * that one raw byte (so a piece alone may be an incomplete UTF-8
 * sequence), user-defined tokens as their text, unused tokens as nothing,
 * and control and unknown tokens as nothing when special is false or as
 * their text when special is true.
 * Returns a pointer into the tokenizer (valid until velo_tokenizer_free,
 * not NUL-terminated) and sets *len; an id outside 0..n_vocab-1 gives ""
 * with *len 0.  Thread-safe, O(1). */
const char *velo_tokenizer_piece(const velo_tokenizer *tok, int32_t id, bool special,
                                 size_t *len);

/* The token's text as stored in the vocabulary (U+2581 not replaced;
 * "<0x0A>" for a byte token).  Pointer valid until velo_tokenizer_free, not
 * NUL-terminated; "" with *len 0 for an id out of range.  Thread-safe. */
const char *velo_tokenizer_token_text(const velo_tokenizer *tok, int32_t id, size_t *len);

/* The id of the token whose vocabulary text is exactly text[0..len), or -1.
 * Thread-safe, O(len). */
int32_t velo_tokenizer_find(const velo_tokenizer *tok, const char *text, size_t len);

/* The type of token id after load (llama.cpp marks end-of-generation tokens
 * such as "<|end|>" as control); 0 for an id out of range.  Thread-safe. */
velo_token_type velo_tokenizer_token_type(const velo_tokenizer *tok, int32_t id);

/* Number of tokens in the vocabulary (>= 1).  Thread-safe. */
int32_t velo_tokenizer_n_vocab(const velo_tokenizer *tok);

/* Special token ids, or -1 when the vocabulary has none.  Thread-safe. */
int32_t velo_tokenizer_bos(const velo_tokenizer *tok);
int32_t velo_tokenizer_eos(const velo_tokenizer *tok);
int32_t velo_tokenizer_unk(const velo_tokenizer *tok);
int32_t velo_tokenizer_pad(const velo_tokenizer *tok);

/* True if generating id ends the generation: the EOS token, the EOT / EOM
 * tokens (from their keys or, as llama.cpp does, found by text:
 * "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
 * "<|eom_id|>", "<EOT>").  False for ids out of range.  Thread-safe, O(1). */
bool velo_tokenizer_is_eog(const velo_tokenizer *tok, int32_t id);

/* Whether encoding with add_special prepends BOS / appends EOS, and whether
 * a space is put in front of the text.  Thread-safe. */
bool velo_tokenizer_add_bos(const velo_tokenizer *tok);
bool velo_tokenizer_add_eos(const velo_tokenizer *tok);
bool velo_tokenizer_add_space_prefix(const velo_tokenizer *tok);

/* Checks that text[0..len) is valid UTF-8 (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF).  Returns len if it is, else the byte
 * offset of the first byte of the first invalid sequence.  Pure. */
size_t velo_utf8_validate(const char *text, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* VELO_TEXTGEN_TOKENIZER_H */
