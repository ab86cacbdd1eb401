/* train_model_tmpl.h - the whole trainable model, written once for `real`.
 *
 * Included twice by train_model.c (real = float / double, SFX = f32 /
 * f64).  No include guard on purpose.
 *
 * Towers are transformers as in Hugging Face's CLIPModel, SiglipModel and
 * ChineseCLIPModel: pre-LN blocks, or BERT's post-LN blocks for
 * Chinese-CLIP's text tower.  Text sequences are packed without padding
 * (SigLIP's come padded by the tokenizer, the padding being part of its
 * input): linear layers see every token as one row, attention runs per
 * sequence.  Activations of every layer are kept for the backward pass.
 */

#define TM_CAT2(a, b) a##_##b
#define TM_CAT(a, b) TM_CAT2(a, b)
#define TM(name) TM_CAT(vlm__tmodel_##name, SFX)
#define TMS(name) TM_CAT(tm_##name, SFX) /* file-local */
#define K(name) TM_CAT(vlm__tk_##name, SFX) /* kernels */

/* One encoder tower's activations for up to N rows. */
typedef struct {
  int C, H, M, layers, act, causal;
  int keep_ln1; /* tower_forward's first layer keeps its ln1 (the
                   explanation's finite differences) */
  int post_ln; /* BERT: ln1/ln2 hold the sums before the norms, x1 the
                  first norm's output (see tower_forward) */
  real eps;
  int tower; /* 0 vision, 1 text */
  const vlm__tlayer *off;
  int64_t N, probs_size;
  /* per layer l: slices of l * N * width */
  real *x;     /* [layers + 1][N, C]: x[0] the input, x[l+1] layer l's out */
  real *ln1, *mean1, *rstd1, *qkv, *probs, *att, *x1, *ln2, *mean2, *rstd2;
  real *h, *g;
  real *lora_u; /* [layers][6][N, r] */
  vlm__tk_seqs seqs;
  int *seq_off, *seq_len;
  int64_t *prob_off;
} TMS(tower);

struct TM_CAT(vlm__tmodel, SFX) {
  const vlm__tlayout *L;
  vlm__tpool *pool;
  int max_batch, frozen;
  int64_t max_text;
  real *p, *g, *lp, *lg;
  TMS(tower) vis, txt;
  /* vision */
  real *patches, *patch_out, *vemb, *pre_mean, *pre_rstd;
  real *vpool, *vpost, *vpost_mean, *vpost_rstd, *vproj, *vnorm, *vemb_n;
  int *vidx;
  int nimg;
  /* SigLIP's head over vpost (every row post-normed): the probe's query
   * hq, keys and values hkv, attention hatt (probabilities hprobs), its
   * out_proj ho, layernorm hln, MLP hh -> hg; vproj = ho + fc2(hg) */
  real *hq, *hkv, *hprobs, *hatt, *ho, *hln, *hmean, *hrstd, *hh, *hg;
  /* text */
  int32_t *tids, *tpos;
  real *traw, *traw_mean, *traw_rstd; /* BERT: embeddings before their LN */
  real *tpool_, *tfin, *tfin_mean, *tfin_rstd, *tproj, *tnorm, *temb_n;
  int *tidx;
  int ntxt;
  int64_t ntok;
  /* loss */
  real *probs_row, *probs_col;
  /* backward scratch */
  real *d_res, *d_c, *d_qkv, *d_m, *d_probs, *d_u;
  real *d_pool, *d_post, *d_proj, *d_emb, *d_embn_img, *d_embn_txt;
  real *d_h1, *d_h2, *d_hq;
  /* explanation: when set, the pre-LN blocks' backward keeps each layer's
   * d(attention output) here ([layers][N, C]) */
  real *d_att_keep;
};

typedef struct TM_CAT(vlm__tmodel, SFX) TMS(model);

static real *TMS(alloc)(int64_t n, int *fail) {
  if (n <= 0)
    n = 1;
  real *p = calloc((size_t)n, sizeof(real));
  if (!p)
    *fail = 1;
  return p;
}

static void TMS(tower_free)(TMS(tower) *t) {
  free(t->x); free(t->ln1); free(t->mean1); free(t->rstd1); free(t->qkv);
  free(t->probs); free(t->att); free(t->x1); free(t->ln2); free(t->mean2);
  free(t->rstd2); free(t->h); free(t->g); free(t->lora_u);
  free(t->seq_off); free(t->seq_len); free(t->prob_off);
}

static int TMS(tower_init)(TMS(tower) *t, const vlm__tlayout *L, int tower,
                           int64_t N, int max_seqs, int64_t probs_size) {
  const vlm__clip_config *c = &L->cfg;
  t->tower = tower;
  if (tower == 0) {
    t->C = c->vision_width; t->H = c->vision_heads; t->M = c->vision_mlp;
    t->layers = c->vision_layers; t->act = (int)c->vision_act;
    t->eps = c->vision_eps; t->causal = 0; t->off = L->vlayers;
  } else {
    t->C = c->text_width; t->H = c->text_heads; t->M = c->text_mlp;
    t->layers = c->text_layers; t->act = (int)c->text_act;
    t->eps = c->text_eps; t->off = L->tlayers;
    /* CLIP's text is causal; SigLIP's and BERT's attend to every token */
    t->causal = c->family == VLM__FAMILY_CLIP;
    t->post_ln = L->text_bert;
  }
  t->N = N;
  t->probs_size = probs_size;
  int64_t nl = t->layers, C = t->C, M = t->M;
  int fail = 0;
  t->x = TMS(alloc)((nl + 1) * N * C, &fail);
  t->ln1 = TMS(alloc)(nl * N * C, &fail);
  t->mean1 = TMS(alloc)(nl * N, &fail);
  t->rstd1 = TMS(alloc)(nl * N, &fail);
  t->qkv = TMS(alloc)(nl * N * 3 * C, &fail);
  t->probs = TMS(alloc)(nl * probs_size, &fail);
  t->att = TMS(alloc)(nl * N * C, &fail);
  t->x1 = TMS(alloc)(nl * N * C, &fail);
  t->ln2 = TMS(alloc)(nl * N * C, &fail);
  t->mean2 = TMS(alloc)(nl * N, &fail);
  t->rstd2 = TMS(alloc)(nl * N, &fail);
  t->h = TMS(alloc)(nl * N * M, &fail);
  t->g = TMS(alloc)(nl * N * M, &fail);
  if (L->lora_rank > 0)
    t->lora_u = TMS(alloc)(nl * VLM__LORA_N * N * L->lora_rank, &fail);
  t->seq_off = calloc((size_t)max_seqs, sizeof(int));
  t->seq_len = calloc((size_t)max_seqs, sizeof(int));
  t->prob_off = calloc((size_t)max_seqs, sizeof(int64_t));
  if (!t->seq_off || !t->seq_len || !t->prob_off)
    fail = 1;
  t->seqs.off = t->seq_off;
  t->seqs.len = t->seq_len;
  t->seqs.prob_off = t->prob_off;
  return fail ? VLM_ENOMEM : 0;
}

void TM(free)(TMS(model) *m) {
  if (!m)
    return;
  TMS(tower_free)(&m->vis);
  TMS(tower_free)(&m->txt);
  free(m->p); free(m->g); free(m->lp); free(m->lg);
  free(m->patches); free(m->patch_out); free(m->vemb); free(m->pre_mean);
  free(m->pre_rstd); free(m->vpool); free(m->vpost); free(m->vpost_mean);
  free(m->vpost_rstd); free(m->vproj); free(m->vnorm); free(m->vemb_n);
  free(m->vidx); free(m->tids); free(m->tpos); free(m->tpool_);
  free(m->hq); free(m->hkv); free(m->hprobs); free(m->hatt); free(m->ho);
  free(m->hln); free(m->hmean); free(m->hrstd); free(m->hh); free(m->hg);
  free(m->traw); free(m->traw_mean); free(m->traw_rstd);
  free(m->d_h1); free(m->d_h2); free(m->d_hq);
  free(m->tfin); free(m->tfin_mean); free(m->tfin_rstd); free(m->tproj);
  free(m->tnorm); free(m->temb_n); free(m->tidx); free(m->probs_row);
  free(m->probs_col); free(m->d_res); free(m->d_c); free(m->d_qkv);
  free(m->d_m); free(m->d_probs); free(m->d_u); free(m->d_pool);
  free(m->d_post); free(m->d_proj); free(m->d_emb); free(m->d_embn_img);
  free(m->d_embn_txt);
  free(m);
}

int TM(create)(const vlm__tlayout *L, vlm__tpool *pool, int max_batch,
               int64_t max_text, int with_grads, TMS(model) **out) {
  *out = NULL;
  if (max_batch < 1 || max_text < max_batch)
    return vlm_seterr(VLM_EINVAL, "trainer: batch %d, text tokens %lld",
                      max_batch, (long long)max_text);
  TMS(model) *m = calloc(1, sizeof *m);
  if (!m)
    return vlm_seterr(VLM_ENOMEM, "trainer: model");
  const vlm__clip_config *c = &L->cfg;
  m->L = L;
  m->pool = pool;
  m->max_batch = max_batch;
  m->max_text = max_text;
  m->frozen = L->lora_rank > 0;
  int B = max_batch, T = L->vision_tokens, np = T - L->vision_cls;
  const int siglip = c->family == VLM__FAMILY_SIGLIP;
  int Cv = c->vision_width, Ct = c->text_width, D = c->projection_dim;
  int P = c->patch_size, r = L->lora_rank;
  int64_t Nv = (int64_t)B * T, Nt = max_text;
  /* text probabilities: the longest packing is B sequences of ctx, but
   * never more tokens than max_text; bound by sum len^2 <= max_text*ctx */
  int64_t ctx = c->context_length;
  int64_t tprobs = (int64_t)c->text_heads *
                   (max_text < ctx ? max_text : ctx) * max_text;
  int fail = 0;
  if (TMS(tower_init)(&m->vis, L, 0, Nv, B,
                      (int64_t)B * c->vision_heads * T * T) ||
      TMS(tower_init)(&m->txt, L, 1, Nt, B, tprobs))
    fail = 1;
  m->p = TMS(alloc)((int64_t)L->total, &fail);
  if (with_grads)
    m->g = TMS(alloc)((int64_t)L->total, &fail);
  if (r > 0) {
    m->lp = TMS(alloc)((int64_t)L->lora_total, &fail);
    if (with_grads)
      m->lg = TMS(alloc)((int64_t)L->lora_total, &fail);
  }
  m->patches = TMS(alloc)((int64_t)B * np * 3 * P * P, &fail);
  m->patch_out = TMS(alloc)((int64_t)B * np * Cv, &fail);
  m->vemb = TMS(alloc)(Nv * Cv, &fail);
  m->pre_mean = TMS(alloc)(Nv, &fail);
  m->pre_rstd = TMS(alloc)(Nv, &fail);
  m->vpool = TMS(alloc)((int64_t)B * Cv, &fail);
  /* SigLIP post-norms every row (for its head), the others one per image */
  int64_t npost = siglip ? Nv : B;
  m->vpost = TMS(alloc)(npost * Cv, &fail);
  m->vpost_mean = TMS(alloc)(npost, &fail);
  m->vpost_rstd = TMS(alloc)(npost, &fail);
  if (siglip) {
    int64_t Mv = c->vision_mlp;
    m->hq = TMS(alloc)(Cv, &fail);
    m->hkv = TMS(alloc)(Nv * 2 * Cv, &fail);
    m->hprobs = TMS(alloc)((int64_t)B * c->vision_heads * T, &fail);
    m->hatt = TMS(alloc)((int64_t)B * Cv, &fail);
    m->ho = TMS(alloc)((int64_t)B * Cv, &fail);
    m->hln = TMS(alloc)((int64_t)B * Cv, &fail);
    m->hmean = TMS(alloc)(B, &fail);
    m->hrstd = TMS(alloc)(B, &fail);
    m->hh = TMS(alloc)((int64_t)B * Mv, &fail);
    m->hg = TMS(alloc)((int64_t)B * Mv, &fail);
  }
  if (L->text_bert) {
    m->traw = TMS(alloc)(Nt * Ct, &fail);
    m->traw_mean = TMS(alloc)(Nt, &fail);
    m->traw_rstd = TMS(alloc)(Nt, &fail);
  }
  m->vproj = TMS(alloc)((int64_t)B * D, &fail);
  m->vnorm = TMS(alloc)(B, &fail);
  m->vemb_n = TMS(alloc)((int64_t)B * D, &fail);
  m->vidx = calloc((size_t)B, sizeof(int));
  m->tids = calloc((size_t)Nt, sizeof(int32_t));
  m->tpos = calloc((size_t)Nt, sizeof(int32_t));
  m->tpool_ = TMS(alloc)((int64_t)B * Ct, &fail);
  m->tfin = TMS(alloc)((int64_t)B * Ct, &fail);
  m->tfin_mean = TMS(alloc)(B, &fail);
  m->tfin_rstd = TMS(alloc)(B, &fail);
  m->tproj = TMS(alloc)((int64_t)B * D, &fail);
  m->tnorm = TMS(alloc)(B, &fail);
  m->temb_n = TMS(alloc)((int64_t)B * D, &fail);
  m->tidx = calloc((size_t)B, sizeof(int));
  m->probs_row = TMS(alloc)((int64_t)B * B, &fail);
  m->probs_col = TMS(alloc)((int64_t)B * B, &fail);
  if (!m->vidx || !m->tids || !m->tpos || !m->tidx)
    fail = 1;
  if (with_grads) {
    int64_t Nmax = Nv > Nt ? Nv : Nt;
    int64_t Cmax = Cv > Ct ? Cv : Ct;
    int64_t Mmax = c->vision_mlp > c->text_mlp ? c->vision_mlp : c->text_mlp;
    int64_t pmax = m->vis.probs_size > m->txt.probs_size ? m->vis.probs_size
                                                         : m->txt.probs_size;
    m->d_res = TMS(alloc)(Nmax * Cmax, &fail);
    m->d_c = TMS(alloc)(Nmax * Cmax, &fail);
    m->d_h1 = TMS(alloc)((int64_t)B * Cmax, &fail);
    m->d_h2 = TMS(alloc)((int64_t)B * Cmax, &fail);
    m->d_hq = TMS(alloc)(Cmax, &fail);
    m->d_qkv = TMS(alloc)(Nmax * 3 * Cmax, &fail);
    m->d_m = TMS(alloc)(Nmax * Mmax, &fail);
    m->d_probs = TMS(alloc)(pmax, &fail);
    if (r > 0)
      m->d_u = TMS(alloc)(Nmax * r, &fail);
    m->d_pool = TMS(alloc)((int64_t)B * Cmax, &fail);
    m->d_post = TMS(alloc)((int64_t)B * Cmax, &fail);
    m->d_proj = TMS(alloc)((int64_t)B * D, &fail);
    m->d_emb = TMS(alloc)((int64_t)B * np * Cv, &fail);
    m->d_embn_img = TMS(alloc)((int64_t)B * D, &fail);
    m->d_embn_txt = TMS(alloc)((int64_t)B * D, &fail);
  }
  if (fail) {
    TM(free)(m);
    return vlm_seterr(VLM_ENOMEM, "trainer: activations for batch %d", B);
  }
  *out = m;
  return 0;
}

real *TM(params)(TMS(model) *m) { return m->p; }
real *TM(grads)(TMS(model) *m) { return m->g; }
real *TM(lora)(TMS(model) *m) { return m->lp; }
real *TM(lora_grads)(TMS(model) *m) { return m->lg; }
void TM(freeze_base)(TMS(model) *m, int frozen) { m->frozen = frozen; }
const real *TM(image_proj)(const TMS(model) *m) { return m->vproj; }
const real *TM(text_proj)(const TMS(model) *m) { return m->tproj; }

void TM(zero_grads)(TMS(model) *m) {
  if (m->g)
    memset(m->g, 0, sizeof(real) * m->L->total);
  if (m->lg)
    memset(m->lg, 0, sizeof(real) * m->L->lora_total);
}

/* Base-weight gradient pointer, or NULL while the base is frozen. */
static real *TMS(gw)(TMS(model) *m, size_t off) {
  return m->g && !m->frozen ? m->g + off : NULL;
}

/* ---- linear layers with optional LoRA ------------------------------- */

/* out[N, ld] columns [0, Cout) += scale * (inp A^T) B^T, caching u. */
static void TMS(lora_fwd)(TMS(model) *m, real *out, int ldo, const real *inp,
                          int N, int Cin, int Cout, size_t a_off, size_t b_off,
                          real *u) {
  int r = m->L->lora_rank;
  real s = (real)m->L->lora_scale;
  K(gemm)(m->pool, 0, 1, N, r, Cin, 1, inp, Cin, m->lp + a_off, Cin, 0, u, r);
  K(gemm)(m->pool, 0, 1, N, Cout, r, s, u, r, m->lp + b_off, r, 1, out, ldo);
}

/* dinp[N,Cin] += du A, dA += du^T inp, dB += scale dout^T u, with du =
 * scale dout B. */
static void TMS(lora_bwd)(TMS(model) *m, real *dinp, const real *dout, int ldo,
                          const real *inp, int N, int Cin, int Cout,
                          size_t a_off, size_t b_off, const real *u) {
  int r = m->L->lora_rank;
  real s = (real)m->L->lora_scale;
  real *du = m->d_u;
  if (m->lg)
    K(gemm)(m->pool, 1, 0, Cout, r, N, s, dout, ldo, u, r, 1, m->lg + b_off,
            r);
  K(gemm)(m->pool, 0, 0, N, r, Cout, s, dout, ldo, m->lp + b_off, r, 0, du,
          r);
  if (m->lg)
    K(gemm)(m->pool, 1, 0, r, Cin, N, 1, du, r, inp, Cin, 1, m->lg + a_off,
            Cin);
  if (dinp)
    K(gemm)(m->pool, 0, 0, N, Cin, r, 1, du, r, m->lp + a_off, Cin, 1, dinp,
            Cin);
}

static real *TMS(lora_u)(TMS(model) *m, TMS(tower) *t, int l, int which) {
  return t->lora_u +
         ((int64_t)l * VLM__LORA_N + which) * t->N * m->L->lora_rank;
}

/* ---- one tower ------------------------------------------------------ */

/* Pre-LN (CLIP, SigLIP):
 *   ln1 = LN1(x); x1 = x + O(attn(QKV(ln1))); ln2 = LN2(x1);
 *   xo = x1 + fc2(act(fc1(ln2)))
 * Post-LN (BERT), the same buffers holding:
 *   ln1 = x + O(attn(QKV(x))); x1 = LN1(ln1); ln2 = x1 + fc2(act(fc1(x1)));
 *   xo = LN2(ln2) */
static void TMS(tower_forward)(TMS(model) *m, TMS(tower) *t, int64_t N,
                                int from) {
  int C = t->C, M = t->M;
  const real *p = m->p;
  int lora = m->L->lora_rank > 0, post = t->post_ln;
  for (int l = from; l < t->layers; l++) {
    const vlm__tlayer *o = &t->off[l];
    real *x = t->x + l * t->N * C, *xo = t->x + (l + 1) * t->N * C;
    real *ln1 = t->ln1 + l * t->N * C, *qkv = t->qkv + l * t->N * 3 * C;
    real *att = t->att + l * t->N * C, *x1 = t->x1 + l * t->N * C;
    real *ln2 = t->ln2 + l * t->N * C;
    real *h = t->h + l * t->N * M, *g = t->g + l * t->N * M;
    real *probs = t->probs + l * t->probs_size;
    real *mean1 = t->mean1 + l * t->N, *rstd1 = t->rstd1 + l * t->N;
    real *mean2 = t->mean2 + l * t->N, *rstd2 = t->rstd2 + l * t->N;
    const real *ain = x; /* the attention's input */
    if (!post) {
      if (!(t->keep_ln1 && l == from))
        K(layernorm_forward)(m->pool, ln1, mean1, rstd1, x, p + o->ln1_w,
                             p + o->ln1_b, (int)N, C, t->eps);
      ain = ln1;
    }
    K(linear_forward)(m->pool, qkv, ain, p + o->qkv_w, p + o->qkv_b, (int)N, C,
                      3 * C);
    if (lora)
      for (int w = VLM__LORA_Q; w <= VLM__LORA_V; w++)
        TMS(lora_fwd)(m, qkv + w * C, 3 * C, ain, (int)N, C, C,
                      o->lora_a[w], o->lora_b[w], TMS(lora_u)(m, t, l, w));
    K(attention_forward)(m->pool, att, probs, qkv, &t->seqs, C, t->H,
                         t->causal);
    /* r1 = x + att Wo^T + bo: x1 (pre-LN) or ln1 (post-LN) */
    real *r1 = post ? ln1 : x1;
    K(linear_forward)(m->pool, r1, att, p + o->o_w, p + o->o_b, (int)N, C, C);
    if (lora)
      TMS(lora_fwd)(m, r1, C, att, (int)N, C, C, o->lora_a[VLM__LORA_O],
                    o->lora_b[VLM__LORA_O], TMS(lora_u)(m, t, l, VLM__LORA_O));
    K(add)(m->pool, r1, r1, x, N * C);
    const real *min; /* the MLP's input */
    if (post) {
      K(layernorm_forward)(m->pool, x1, mean1, rstd1, ln1, p + o->ln1_w,
                           p + o->ln1_b, (int)N, C, t->eps);
      min = x1;
    } else {
      K(layernorm_forward)(m->pool, ln2, mean2, rstd2, x1, p + o->ln2_w,
                           p + o->ln2_b, (int)N, C, t->eps);
      min = ln2;
    }
    K(linear_forward)(m->pool, h, min, p + o->fc1_w, p + o->fc1_b, (int)N, C,
                      M);
    if (lora)
      TMS(lora_fwd)(m, h, M, min, (int)N, C, M, o->lora_a[VLM__LORA_FC1],
                    o->lora_b[VLM__LORA_FC1],
                    TMS(lora_u)(m, t, l, VLM__LORA_FC1));
    K(act_forward)(m->pool, g, h, N * M, t->act);
    /* r2 = x1 + fc2(g): xo (pre-LN) or ln2 (post-LN) */
    real *r2 = post ? ln2 : xo;
    K(linear_forward)(m->pool, r2, g, p + o->fc2_w, p + o->fc2_b, (int)N, M,
                      C);
    if (lora)
      TMS(lora_fwd)(m, r2, C, g, (int)N, M, C, o->lora_a[VLM__LORA_FC2],
                    o->lora_b[VLM__LORA_FC2],
                    TMS(lora_u)(m, t, l, VLM__LORA_FC2));
    K(add)(m->pool, r2, r2, x1, N * C);
    if (post)
      K(layernorm_forward)(m->pool, xo, mean2, rstd2, ln2, p + o->ln2_w,
                           p + o->ln2_b, (int)N, C, t->eps);
  }
}

/* The pre-LN block's backward: d_res holds d(xo) and gets d(x). */
static void TMS(block_backward_pre)(TMS(model) *m, TMS(tower) *t, int l,
                                    int64_t N) {
  int C = t->C, M = t->M;
  const real *p = m->p;
  int lora = m->L->lora_rank > 0;
  real *dres = m->d_res, *dc = m->d_c, *dqkv = m->d_qkv, *dm = m->d_m;
  const vlm__tlayer *o = &t->off[l];
  real *x = t->x + l * t->N * C;
  real *ln1 = t->ln1 + l * t->N * C, *qkv = t->qkv + l * t->N * 3 * C;
  real *att = t->att + l * t->N * C, *x1 = t->x1 + l * t->N * C;
  real *ln2 = t->ln2 + l * t->N * C;
  real *h = t->h + l * t->N * M, *g = t->g + l * t->N * M;
  real *probs = t->probs + l * t->probs_size;
  /* MLP: xo = x1 + fc2(act(fc1(ln2(x1)))) */
  K(linear_backward)(m->pool, dm, 0, TMS(gw)(m, o->fc2_w),
                     TMS(gw)(m, o->fc2_b), dres, g, p + o->fc2_w, (int)N, M,
                     C);
  if (lora)
    TMS(lora_bwd)(m, dm, dres, C, g, (int)N, M, C, o->lora_a[VLM__LORA_FC2],
                  o->lora_b[VLM__LORA_FC2],
                  TMS(lora_u)(m, t, l, VLM__LORA_FC2));
  K(act_backward)(m->pool, dm, h, dm, N * M, t->act);
  K(linear_backward)(m->pool, dc, 0, TMS(gw)(m, o->fc1_w),
                     TMS(gw)(m, o->fc1_b), dm, ln2, p + o->fc1_w, (int)N, C,
                     M);
  if (lora)
    TMS(lora_bwd)(m, dc, dm, M, ln2, (int)N, C, M, o->lora_a[VLM__LORA_FC1],
                  o->lora_b[VLM__LORA_FC1],
                  TMS(lora_u)(m, t, l, VLM__LORA_FC1));
  K(layernorm_backward)(m->pool, dres, TMS(gw)(m, o->ln2_w),
                        TMS(gw)(m, o->ln2_b), dc, x1, p + o->ln2_w,
                        t->mean2 + l * t->N, t->rstd2 + l * t->N, (int)N, C);
  /* attention: x1 = x + out_proj(attn(qkv(ln1(x)))) */
  K(linear_backward)(m->pool, dc, 0, TMS(gw)(m, o->o_w), TMS(gw)(m, o->o_b),
                     dres, att, p + o->o_w, (int)N, C, C);
  if (lora)
    TMS(lora_bwd)(m, dc, dres, C, att, (int)N, C, C, o->lora_a[VLM__LORA_O],
                  o->lora_b[VLM__LORA_O], TMS(lora_u)(m, t, l, VLM__LORA_O));
  if (m->d_att_keep)
    memcpy(m->d_att_keep + l * t->N * C, dc, sizeof(real) * N * C);
  K(attention_backward)(m->pool, dqkv, m->d_probs, dc, qkv, probs, &t->seqs,
                        C, t->H);
  K(linear_backward)(m->pool, dc, 0, TMS(gw)(m, o->qkv_w),
                     TMS(gw)(m, o->qkv_b), dqkv, ln1, p + o->qkv_w, (int)N, C,
                     3 * C);
  if (lora)
    for (int w = VLM__LORA_Q; w <= VLM__LORA_V; w++)
      TMS(lora_bwd)(m, dc, dqkv + w * C, 3 * C, ln1, (int)N, C, C,
                    o->lora_a[w], o->lora_b[w], TMS(lora_u)(m, t, l, w));
  K(layernorm_backward)(m->pool, dres, TMS(gw)(m, o->ln1_w),
                        TMS(gw)(m, o->ln1_b), dc, x, p + o->ln1_w,
                        t->mean1 + l * t->N, t->rstd1 + l * t->N, (int)N, C);
}

/* The post-LN (BERT) block's backward: d_res holds d(xo) and gets d(x). */
static void TMS(block_backward_post)(TMS(model) *m, TMS(tower) *t, int l,
                                     int64_t N) {
  int C = t->C, M = t->M;
  const real *p = m->p;
  int lora = m->L->lora_rank > 0;
  real *dres = m->d_res, *dc = m->d_c, *dqkv = m->d_qkv, *dm = m->d_m;
  const vlm__tlayer *o = &t->off[l];
  real *x = t->x + l * t->N * C;
  real *s1 = t->ln1 + l * t->N * C, *qkv = t->qkv + l * t->N * 3 * C;
  real *att = t->att + l * t->N * C, *x1 = t->x1 + l * t->N * C;
  real *s2 = t->ln2 + l * t->N * C;
  real *h = t->h + l * t->N * M, *g = t->g + l * t->N * M;
  real *probs = t->probs + l * t->probs_size;
  /* xo = LN2(s2), s2 = x1 + fc2(act(fc1(x1))): dc = d s2, then d x1 */
  memset(dc, 0, sizeof(real) * N * C);
  K(layernorm_backward)(m->pool, dc, TMS(gw)(m, o->ln2_w),
                        TMS(gw)(m, o->ln2_b), dres, s2, p + o->ln2_w,
                        t->mean2 + l * t->N, t->rstd2 + l * t->N, (int)N, C);
  K(linear_backward)(m->pool, dm, 0, TMS(gw)(m, o->fc2_w),
                     TMS(gw)(m, o->fc2_b), dc, g, p + o->fc2_w, (int)N, M, C);
  if (lora)
    TMS(lora_bwd)(m, dm, dc, C, g, (int)N, M, C, o->lora_a[VLM__LORA_FC2],
                  o->lora_b[VLM__LORA_FC2],
                  TMS(lora_u)(m, t, l, VLM__LORA_FC2));
  K(act_backward)(m->pool, dm, h, dm, N * M, t->act);
  K(linear_backward)(m->pool, dc, 1, TMS(gw)(m, o->fc1_w),
                     TMS(gw)(m, o->fc1_b), dm, x1, p + o->fc1_w, (int)N, C,
                     M);
  if (lora)
    TMS(lora_bwd)(m, dc, dm, M, x1, (int)N, C, M, o->lora_a[VLM__LORA_FC1],
                  o->lora_b[VLM__LORA_FC1],
                  TMS(lora_u)(m, t, l, VLM__LORA_FC1));
  /* x1 = LN1(s1), s1 = x + O(attn(QKV(x))): dres = d s1, then d x */
  memset(dres, 0, sizeof(real) * N * C);
  K(layernorm_backward)(m->pool, dres, TMS(gw)(m, o->ln1_w),
                        TMS(gw)(m, o->ln1_b), dc, s1, p + o->ln1_w,
                        t->mean1 + l * t->N, t->rstd1 + l * t->N, (int)N, C);
  K(linear_backward)(m->pool, dc, 0, TMS(gw)(m, o->o_w), TMS(gw)(m, o->o_b),
                     dres, att, p + o->o_w, (int)N, C, C);
  if (lora)
    TMS(lora_bwd)(m, dc, dres, C, att, (int)N, C, C, o->lora_a[VLM__LORA_O],
                  o->lora_b[VLM__LORA_O], TMS(lora_u)(m, t, l, VLM__LORA_O));
  K(attention_backward)(m->pool, dqkv, m->d_probs, dc, qkv, probs, &t->seqs,
                        C, t->H);
  K(linear_backward)(m->pool, dres, 1, TMS(gw)(m, o->qkv_w),
                     TMS(gw)(m, o->qkv_b), dqkv, x, p + o->qkv_w, (int)N, C,
                     3 * C);
  if (lora)
    for (int w = VLM__LORA_Q; w <= VLM__LORA_V; w++)
      TMS(lora_bwd)(m, dres, dqkv + w * C, 3 * C, x, (int)N, C, C,
                    o->lora_a[w], o->lora_b[w], TMS(lora_u)(m, t, l, w));
}

/* d_res holds d(output of the last layer) [N,C]; on return it holds
 * d(input of layer 0). */
static void TMS(tower_backward)(TMS(model) *m, TMS(tower) *t, int64_t N) {
  for (int l = t->layers - 1; l >= 0; l--) {
    if (t->post_ln)
      TMS(block_backward_post)(m, t, l, N);
    else
      TMS(block_backward_pre)(m, t, l, N);
  }
}

/* ---- the two encoders ----------------------------------------------- */

/* SigLIP's attention-pooling head over y = vpost [B*T, C] (every row
 * post-normed): q = probe Wq^T + bq; k, v of every row; a = attention of
 * q over each image's rows; o = a Wo^T + bo; out = o + fc2(act(fc1(
 * LN(o)))) into vproj [B, C]. */
static void TMS(head_forward)(TMS(model) *m, int B) {
  const vlm__tlayout *L = m->L;
  const vlm__clip_config *c = &L->cfg;
  const vlm__tlayer *o = &L->vhead;
  const real *p = m->p;
  int C = c->vision_width, M = c->vision_mlp, T = L->vision_tokens;
  K(linear_forward)(m->pool, m->hq, p + L->probe, p + o->qkv_w, p + o->qkv_b,
                    1, C, C);
  K(linear_forward)(m->pool, m->hkv, m->vpost, p + o->qkv_w + (size_t)C * C,
                    p + o->qkv_b + C, B * T, C, 2 * C);
  K(map_attention_forward)(m->pool, m->hatt, m->hprobs, m->hq, m->hkv, B, T,
                           C, c->vision_heads);
  K(linear_forward)(m->pool, m->ho, m->hatt, p + o->o_w, p + o->o_b, B, C, C);
  K(layernorm_forward)(m->pool, m->hln, m->hmean, m->hrstd, m->ho,
                       p + o->ln2_w, p + o->ln2_b, B, C, c->vision_eps);
  K(linear_forward)(m->pool, m->hh, m->hln, p + o->fc1_w, p + o->fc1_b, B, C,
                    M);
  K(act_forward)(m->pool, m->hg, m->hh, (int64_t)B * M, (int)c->vision_act);
  K(linear_forward)(m->pool, m->vproj, m->hg, p + o->fc2_w, p + o->fc2_b, B,
                    M, C);
  K(add)(m->pool, m->vproj, m->vproj, m->ho, (int64_t)B * C);
}

/* d_proj holds d(vproj) [B, C]; on return d_c holds d(vpost) [B*T, C]. */
static void TMS(head_backward)(TMS(model) *m, int B) {
  const vlm__tlayout *L = m->L;
  const vlm__clip_config *c = &L->cfg;
  const vlm__tlayer *o = &L->vhead;
  const real *p = m->p;
  int C = c->vision_width, M = c->vision_mlp, T = L->vision_tokens;
  real *dho = m->d_h1, *dt = m->d_h2, *dm = m->d_m, *dkv = m->d_qkv;
  K(linear_backward)(m->pool, dm, 0, TMS(gw)(m, o->fc2_w),
                     TMS(gw)(m, o->fc2_b), m->d_proj, m->hg, p + o->fc2_w, B,
                     M, C);
  K(act_backward)(m->pool, dm, m->hh, dm, (int64_t)B * M, (int)c->vision_act);
  K(linear_backward)(m->pool, dt, 0, TMS(gw)(m, o->fc1_w),
                     TMS(gw)(m, o->fc1_b), dm, m->hln, p + o->fc1_w, B, C, M);
  memcpy(dho, m->d_proj, sizeof(real) * B * C); /* the residual */
  K(layernorm_backward)(m->pool, dho, TMS(gw)(m, o->ln2_w),
                        TMS(gw)(m, o->ln2_b), dt, m->ho, p + o->ln2_w,
                        m->hmean, m->hrstd, B, C);
  K(linear_backward)(m->pool, dt, 0, TMS(gw)(m, o->o_w), TMS(gw)(m, o->o_b),
                     dho, m->hatt, p + o->o_w, B, C, C);
  K(map_attention_backward)(m->pool, m->d_hq, dkv, dt, m->hq, m->hkv,
                            m->hprobs, B, T, C, c->vision_heads);
  /* q = probe Wq^T + bq: the probe's gradient and the q rows' */
  K(linear_backward)(m->pool, TMS(gw)(m, L->probe), 1, TMS(gw)(m, o->qkv_w),
                     TMS(gw)(m, o->qkv_b), m->d_hq, p + L->probe,
                     p + o->qkv_w, 1, C, C);
  K(linear_backward)(m->pool, m->d_c, 0,
                     TMS(gw)(m, o->qkv_w + (size_t)C * C),
                     TMS(gw)(m, o->qkv_b + C), dkv, m->vpost,
                     p + o->qkv_w + (size_t)C * C, B * T, C, 2 * C);
}

static void TMS(vision_tail)(TMS(model) *m, int B);

void TM(images)(TMS(model) *m, const real *pixels, int B, real *emb) {
  const vlm__tlayout *L = m->L;
  const vlm__clip_config *c = &L->cfg;
  const real *p = m->p;
  int T = L->vision_tokens, C = c->vision_width, D = c->projection_dim;
  const int siglip = c->family == VLM__FAMILY_SIGLIP;
  TMS(tower) *t = &m->vis;
  int64_t N = (int64_t)B * T;
  assert(B <= m->max_batch);
  m->nimg = B;
  t->seqs.n = B;
  t->seqs.max_len = T;
  for (int b = 0; b < B; b++) {
    t->seq_off[b] = b * T;
    t->seq_len[b] = T;
    t->prob_off[b] = (int64_t)b * c->vision_heads * T * T;
    m->vidx[b] = b * T;
  }
  K(patch_embed_forward)(m->pool, m->patch_out, m->patches, pixels,
                         p + L->patch_w, B, c->image_size, c->patch_size, C);
  if (siglip) {
    /* patches (with the convolution's bias) + positions, no class token
     * and no pre-norm: straight into the tower's input */
    K(add_row_forward)(m->pool, m->patch_out, p + L->patch_b,
                       B * (T - L->vision_cls), C);
    K(vision_embed_forward)(m->pool, t->x, m->patch_out, NULL, p + L->vpos, B,
                            T, C);
  } else {
    K(vision_embed_forward)(m->pool, m->vemb, m->patch_out, p + L->cls,
                            p + L->vpos, B, T, C);
    K(layernorm_forward)(m->pool, t->x, m->pre_mean, m->pre_rstd, m->vemb,
                         p + L->pre_ln_w, p + L->pre_ln_b, (int)N, C,
                         c->vision_eps);
  }
  TMS(tower_forward)(m, t, N, 0);
  TMS(vision_tail)(m, B);
  if (emb)
    memcpy(emb, m->vemb_n, sizeof(real) * B * D);
}

/* The vision tower after its blocks, for the B images whose last block
 * output is in the tower: post-norm, then the class row (CLIP,
 * Chinese-CLIP) or SigLIP's head, the projection and the L2 norm. */
static void TMS(vision_tail)(TMS(model) *m, int B) {
  const vlm__tlayout *L = m->L;
  const vlm__clip_config *c = &L->cfg;
  const real *p = m->p;
  int T = L->vision_tokens, C = c->vision_width, D = c->projection_dim;
  const int siglip = c->family == VLM__FAMILY_SIGLIP;
  TMS(tower) *t = &m->vis;
  int64_t N = (int64_t)B * T;
  const real *last = t->x + (int64_t)t->layers * t->N * C;
  if (siglip) {
    K(layernorm_forward)(m->pool, m->vpost, m->vpost_mean, m->vpost_rstd,
                         last, p + L->post_ln_w, p + L->post_ln_b, (int)N, C,
                         c->vision_eps);
    TMS(head_forward)(m, B);
  } else {
    K(gather_rows)(m->vpool, last, m->vidx, B, C);
    K(layernorm_forward)(m->pool, m->vpost, m->vpost_mean, m->vpost_rstd,
                         m->vpool, p + L->post_ln_w, p + L->post_ln_b, B, C,
                         c->vision_eps);
    K(linear_forward)(m->pool, m->vproj, m->vpost, p + L->vproj, NULL, B, C,
                      D);
  }
  K(l2norm_forward)(m->vemb_n, m->vnorm, m->vproj, B, D);
}

void TM(texts)(TMS(model) *m, const vlm__ttexts *tx, real *emb) {
  const vlm__tlayout *L = m->L;
  const vlm__clip_config *c = &L->cfg;
  const real *p = m->p;
  int C = c->text_width, D = c->projection_dim, B = tx->n;
  TMS(tower) *t = &m->txt;
  int64_t N = 0, poff = 0;
  int maxlen = 0;
  for (int b = 0; b < B; b++) {
    int len = tx->len[b];
    t->seq_off[b] = (int)N;
    t->seq_len[b] = len;
    t->prob_off[b] = poff;
    for (int i = 0; i < len; i++) {
      m->tids[N + i] = tx->ids[tx->off[b] + i];
      m->tpos[N + i] = i;
    }
    /* BERT pools [CLS], the first row; CLIP and SigLIP the last */
    m->tidx[b] = L->text_bert ? (int)N : (int)N + len - 1;
    N += len;
    poff += (int64_t)c->text_heads * len * len;
    if (len > maxlen)
      maxlen = len;
  }
  assert(B <= m->max_batch && N <= m->max_text);
  m->ntxt = B;
  m->ntok = N;
  t->seqs.n = B;
  t->seqs.max_len = maxlen;
  if (L->text_bert) {
    /* word + position + token type 0, then the embeddings' LayerNorm */
    K(text_embed_forward)(m->pool, m->traw, m->tids, m->tpos, p + L->tok,
                          p + L->tpos, (int)N, C);
    K(add_row_forward)(m->pool, m->traw, p + L->type_emb, (int)N, C);
    K(layernorm_forward)(m->pool, t->x, m->traw_mean, m->traw_rstd, m->traw,
                         p + L->emb_ln_w, p + L->emb_ln_b, (int)N, C,
                         c->text_eps);
  } else {
    K(text_embed_forward)(m->pool, t->x, m->tids, m->tpos, p + L->tok,
                          p + L->tpos, (int)N, C);
  }
  TMS(tower_forward)(m, t, N, 0);
  K(gather_rows)(m->tpool_, t->x + (int64_t)t->layers * t->N * C, m->tidx, B,
                 C);
  const real *pooled = m->tpool_;
  if (!L->text_bert) {
    K(layernorm_forward)(m->pool, m->tfin, m->tfin_mean, m->tfin_rstd,
                         m->tpool_, p + L->final_ln_w, p + L->final_ln_b, B,
                         C, c->text_eps);
    pooled = m->tfin;
  }
  K(linear_forward)(m->pool, m->tproj, pooled, p + L->tproj,
                    c->family == VLM__FAMILY_SIGLIP ? p + L->tproj_b : NULL, B,
                    C, D);
  K(l2norm_forward)(m->temb_n, m->tnorm, m->tproj, B, D);
  if (emb)
    memcpy(emb, m->temb_n, sizeof(real) * B * D);
}

real TM(loss)(TMS(model) *m) {
  if (m->L->cfg.family == VLM__FAMILY_SIGLIP)
    return K(siglip_loss_forward)(m->probs_row, m->vemb_n, m->temb_n,
                                  m->p[m->L->logit_scale],
                                  m->p[m->L->logit_bias], m->nimg,
                                  m->L->cfg.projection_dim);
  return K(clip_loss_forward)(m->probs_row, m->probs_col, m->vemb_n,
                              m->temb_n, m->p[m->L->logit_scale], m->nimg,
                              m->L->cfg.projection_dim);
}

/* d_embn_img holds d(the normalized image embeddings) [B, D]; on return
 * d_res holds d(the vision tower's last block output) [B*T, C]. */
static void TMS(vision_tail_backward)(TMS(model) *m, int B) {
  const vlm__tlayout *L = m->L;
  const vlm__clip_config *c = &L->cfg;
  const real *p = m->p;
  int C = c->vision_width, T = L->vision_tokens, D = c->projection_dim;
  const int siglip = c->family == VLM__FAMILY_SIGLIP;
  TMS(tower) *t = &m->vis;
  int64_t N = (int64_t)B * T;
  K(l2norm_backward)(m->d_proj, m->d_embn_img, m->vemb_n, m->vnorm, B, D);
  memset(m->d_res, 0, sizeof(real) * N * C);
  if (siglip) {
    TMS(head_backward)(m, B);
    K(layernorm_backward)(m->pool, m->d_res, TMS(gw)(m, L->post_ln_w),
                          TMS(gw)(m, L->post_ln_b), m->d_c,
                          t->x + (int64_t)t->layers * t->N * C,
                          p + L->post_ln_w, m->vpost_mean, m->vpost_rstd,
                          (int)N, C);
  } else {
    K(linear_backward)(m->pool, m->d_post, 0, TMS(gw)(m, L->vproj), NULL,
                       m->d_proj, m->vpost, p + L->vproj, B, C, D);
    memset(m->d_pool, 0, sizeof(real) * B * C);
    K(layernorm_backward)(m->pool, m->d_pool, TMS(gw)(m, L->post_ln_w),
                          TMS(gw)(m, L->post_ln_b), m->d_post, m->vpool,
                          p + L->post_ln_w, m->vpost_mean, m->vpost_rstd, B,
                          C);
    K(scatter_rows)(m->d_res, m->d_pool, m->vidx, B, C);
  }
}

/* d_embn_txt holds d(the normalized text embeddings) [B, D] of the last
 * texts call (B texts): add the text tower's gradients. */
static void TMS(text_backward)(TMS(model) *m, int B) {
  const vlm__tlayout *L = m->L;
  const vlm__clip_config *c = &L->cfg;
  const real *p = m->p;
  int D = c->projection_dim;
  const int siglip = c->family == VLM__FAMILY_SIGLIP;
  TMS(tower) *t = &m->txt;
  int C = c->text_width;
  int64_t N = m->ntok;
  K(l2norm_backward)(m->d_proj, m->d_embn_txt, m->temb_n, m->tnorm, B, D);
  K(linear_backward)(m->pool, m->d_post, 0, TMS(gw)(m, L->tproj),
                     siglip ? TMS(gw)(m, L->tproj_b) : NULL, m->d_proj,
                     L->text_bert ? m->tpool_ : m->tfin, p + L->tproj, B, C,
                     D);
  if (L->text_bert) {
    memcpy(m->d_pool, m->d_post, sizeof(real) * B * C);
  } else {
    memset(m->d_pool, 0, sizeof(real) * B * C);
    K(layernorm_backward)(m->pool, m->d_pool, TMS(gw)(m, L->final_ln_w),
                          TMS(gw)(m, L->final_ln_b), m->d_post, m->tpool_,
                          p + L->final_ln_w, m->tfin_mean, m->tfin_rstd, B,
                          C);
  }
  memset(m->d_res, 0, sizeof(real) * N * C);
  K(scatter_rows)(m->d_res, m->d_pool, m->tidx, B, C);
  TMS(tower_backward)(m, t, N);
  if (L->text_bert) {
    if (TMS(gw)(m, L->tok)) {
      memset(m->d_c, 0, sizeof(real) * N * C);
      K(layernorm_backward)(m->pool, m->d_c, TMS(gw)(m, L->emb_ln_w),
                            TMS(gw)(m, L->emb_ln_b), m->d_res, m->traw,
                            p + L->emb_ln_w, m->traw_mean, m->traw_rstd,
                            (int)N, C);
      K(text_embed_backward)(m->pool, TMS(gw)(m, L->tok),
                             TMS(gw)(m, L->tpos), m->d_c, m->tids, m->tpos,
                             (int)N, C);
      K(add_row_backward)(m->pool, TMS(gw)(m, L->type_emb), m->d_c, (int)N,
                          C);
    }
  } else {
    K(text_embed_backward)(m->pool, TMS(gw)(m, L->tok), TMS(gw)(m, L->tpos),
                           m->d_res, m->tids, m->tpos, (int)N, C);
  }
}

void TM(backward)(TMS(model) *m) {
  const vlm__tlayout *L = m->L;
  const vlm__clip_config *c = &L->cfg;
  const real *p = m->p;
  int B = m->nimg, D = c->projection_dim;
  const int siglip = c->family == VLM__FAMILY_SIGLIP;
  if (siglip)
    K(siglip_loss_backward)(m->d_embn_img, m->d_embn_txt,
                            TMS(gw)(m, L->logit_scale),
                            TMS(gw)(m, L->logit_bias), m->probs_row,
                            m->vemb_n, m->temb_n, p[L->logit_scale], B, D);
  else
    K(clip_loss_backward)(m->d_embn_img, m->d_embn_txt,
                          TMS(gw)(m, L->logit_scale), m->probs_row,
                          m->probs_col, m->vemb_n, m->temb_n,
                          p[L->logit_scale], B, D);
  TMS(text_backward)(m, B);
  /* vision tower */
  {
    TMS(tower) *t = &m->vis;
    int C = c->vision_width, T = L->vision_tokens;
    int64_t N = (int64_t)B * T;
    TMS(vision_tail_backward)(m, B);
    TMS(tower_backward)(m, t, N);
    if (TMS(gw)(m, L->patch_w)) {
      int np = T - L->vision_cls;
      if (siglip) {
        /* no pre-norm: d_res is the embeddings' gradient */
        K(vision_embed_backward)(m->pool, m->d_emb, NULL, TMS(gw)(m, L->vpos),
                                 m->d_res, B, T, C, 0);
        K(add_row_backward)(m->pool, TMS(gw)(m, L->patch_b), m->d_emb,
                            B * np, C);
      } else {
        /* through the pre-norm into the embeddings, then the patches */
        memset(m->d_c, 0, sizeof(real) * N * C);
        K(layernorm_backward)(m->pool, m->d_c, TMS(gw)(m, L->pre_ln_w),
                              TMS(gw)(m, L->pre_ln_b), m->d_res, m->vemb,
                              p + L->pre_ln_w, m->pre_mean, m->pre_rstd,
                              (int)N, C);
        K(vision_embed_backward)(m->pool, m->d_emb, TMS(gw)(m, L->cls),
                                 TMS(gw)(m, L->vpos), m->d_c, B, T, C, 1);
      }
      K(patch_embed_backward)(m->pool, TMS(gw)(m, L->patch_w), m->d_emb,
                              m->patches, B, c->image_size, c->patch_size, C);
    }
  }
}

/* ---- text pairs: a contrastive loss on the text tower alone ---------- */

real TM(text_pair_loss)(TMS(model) *m) {
  int P = m->ntxt / 2, D = m->L->cfg.projection_dim;
  assert(P >= 1 && m->ntxt == 2 * P);
  return K(clip_loss_forward)(m->probs_row, m->probs_col, m->temb_n,
                              m->temb_n + (int64_t)P * D,
                              m->p[m->L->logit_scale], P, D);
}

void TM(text_pair_backward)(TMS(model) *m, real weight) {
  int P = m->ntxt / 2, D = m->L->cfg.projection_dim;
  real dscale = 0; /* the temperature is the image-text loss's to learn */
  K(clip_loss_backward)(m->d_embn_txt, m->d_embn_txt + (int64_t)P * D,
                        &dscale, m->probs_row, m->probs_col, m->temb_n,
                        m->temb_n + (int64_t)P * D, m->p[m->L->logit_scale],
                        P, D);
  for (int64_t i = 0; i < (int64_t)2 * P * D; i++)
    m->d_embn_txt[i] *= weight;
  TMS(text_backward)(m, 2 * P);
}

/* ---- explanation: the score's gradient at the last block's input ---- */

const real *TM(image_block_input)(const TMS(model) *m, int normed) {
  const TMS(tower) *t = &m->vis;
  return (normed ? t->ln1 : t->x) + (int64_t)(t->layers - 1) * t->N * t->C;
}

void TM(image_block_grad)(TMS(model) *m, const real *q, real *grad,
                          real *grad_normed) {
  const vlm__tlayout *L = m->L;
  int B = m->nimg, D = L->cfg.projection_dim;
  TMS(tower) *t = &m->vis;
  int64_t N = (int64_t)B * L->vision_tokens;
  int frozen = m->frozen;
  m->frozen = 1; /* no weight gradients: only the activations' */
  for (int b = 0; b < B; b++)
    memcpy(m->d_embn_img + (int64_t)b * D, q, sizeof(real) * D);
  TMS(vision_tail_backward)(m, B);
  TMS(block_backward_pre)(m, t, t->layers - 1, N);
  /* the first norm's output feeds only q, k and v: d_c holds all of its
   * gradient */
  if (grad)
    memcpy(grad, m->d_res, sizeof(real) * N * t->C);
  if (grad_normed)
    memcpy(grad_normed, m->d_c, sizeof(real) * N * t->C);
  m->frozen = frozen;
}

real TM(image_score_from_block)(TMS(model) *m, const real *tokens,
                                int normed, const real *q) {
  const vlm__tlayout *L = m->L;
  int B = m->nimg, D = L->cfg.projection_dim;
  TMS(tower) *t = &m->vis;
  int64_t N = (int64_t)B * L->vision_tokens;
  memcpy((normed ? t->ln1 : t->x) + (int64_t)(t->layers - 1) * t->N * t->C,
         tokens, sizeof(real) * N * t->C);
  t->keep_ln1 = normed;
  TMS(tower_forward)(m, t, N, t->layers - 1);
  t->keep_ln1 = 0;
  TMS(vision_tail)(m, B);
  real s = 0;
  for (int b = 0; b < B; b++)
    for (int d = 0; d < D; d++)
      s += m->vemb_n[(int64_t)b * D + d] * q[d];
  return s;
}

/* Chefer, Gur and Wolf (ICCV 2021), eq. 5-6, on the class row: for each
 * layer A-bar = mean over heads of ReLU(dS/dP (.) P) and R <- R + A-bar R
 * from R = I; rel[b*T + j] = R[cls, j].  Only the class row of R is
 * needed, so r <- r + r A-bar from the last layer down. */
int TM(image_relevance)(TMS(model) *m, const real *q, real *rel) {
  const vlm__tlayout *L = m->L;
  int B = m->nimg, D = L->cfg.projection_dim, T = L->vision_tokens;
  TMS(tower) *t = &m->vis;
  if (!L->vision_cls || t->post_ln)
    return -1;
  int C = t->C, H = t->H, hd = C / H;
  int64_t N = (int64_t)B * T;
  real *keep = malloc(sizeof(real) * (size_t)t->layers * t->N * C);
  real *abar = malloc(sizeof(real) * (size_t)T * T);
  real *r = malloc(sizeof(real) * (size_t)T);
  if (!keep || !abar || !r) {
    free(keep);
    free(abar);
    free(r);
    return -2;
  }
  int frozen = m->frozen;
  m->frozen = 1;
  for (int b = 0; b < B; b++)
    memcpy(m->d_embn_img + (int64_t)b * D, q, sizeof(real) * D);
  TMS(vision_tail_backward)(m, B);
  m->d_att_keep = keep;
  TMS(tower_backward)(m, t, N);
  m->d_att_keep = NULL;
  m->frozen = frozen;
  for (int b = 0; b < B; b++) {
    real *rb = rel + (int64_t)b * T;
    for (int j = 0; j < T; j++)
      rb[j] = j == 0;
    for (int l = t->layers - 1; l >= 0; l--) {
      memset(abar, 0, sizeof(real) * (size_t)T * T);
      const real *qkv = t->qkv + l * t->N * 3 * C + (int64_t)b * T * 3 * C;
      const real *dO = keep + l * t->N * C + (int64_t)b * T * C;
      for (int h = 0; h < H; h++) {
        const real *P = t->probs + l * t->probs_size + t->seqs.prob_off[b] +
                        (int64_t)h * T * T;
        for (int i = 0; i < T; i++)
          for (int j = 0; j < T; j++) {
            const real *o = dO + (int64_t)i * C + h * hd;
            const real *v = qkv + (int64_t)j * 3 * C + 2 * C + h * hd;
            real dp = 0;
            for (int k = 0; k < hd; k++)
              dp += o[k] * v[k];
            real a = dp * P[(int64_t)i * T + j];
            if (a > 0)
              abar[(int64_t)i * T + j] += a / H;
          }
      }
      for (int j = 0; j < T; j++) {
        real acc = 0;
        for (int i = 0; i < T; i++)
          acc += rb[i] * abar[(int64_t)i * T + j];
        r[j] = acc;
      }
      for (int j = 0; j < T; j++)
        rb[j] += r[j];
    }
  }
  free(keep);
  free(abar);
  free(r);
  return 0;
}

void TM(image_patch_grad)(TMS(model) *m, const real *q, real *grad,
                          real *conv) {
  const vlm__tlayout *L = m->L;
  const vlm__clip_config *c = &L->cfg;
  int B = m->nimg, D = c->projection_dim, C = c->vision_width;
  int T = L->vision_tokens, np = T - L->vision_cls;
  int64_t N = (int64_t)B * T, P = (int64_t)B * np;
  TMS(tower) *t = &m->vis;
  if (conv) {
    memcpy(conv, m->patch_out, sizeof(real) * P * C);
    if (c->family == VLM__FAMILY_SIGLIP) /* the bias was added in place */
      for (int64_t i = 0; i < P; i++)
        for (int k = 0; k < C; k++)
          conv[i * C + k] -= m->p[L->patch_b + k];
  }
  if (!grad)
    return;
  int frozen = m->frozen;
  m->frozen = 1;
  for (int b = 0; b < B; b++)
    memcpy(m->d_embn_img + (int64_t)b * D, q, sizeof(real) * D);
  TMS(vision_tail_backward)(m, B);
  TMS(tower_backward)(m, t, N);
  if (c->family == VLM__FAMILY_SIGLIP) {
    K(vision_embed_backward)(m->pool, m->d_emb, NULL, NULL, m->d_res, B, T, C,
                             0);
  } else {
    memset(m->d_c, 0, sizeof(real) * N * C);
    K(layernorm_backward)(m->pool, m->d_c, NULL, NULL, m->d_res, m->vemb,
                          m->p + L->pre_ln_w, m->pre_mean, m->pre_rstd,
                          (int)N, C);
    K(vision_embed_backward)(m->pool, m->d_emb, NULL, NULL, m->d_c, B, T, C,
                             1);
  }
  memcpy(grad, m->d_emb, sizeof(real) * P * C);
  m->frozen = frozen;
}

#undef TM_CAT2
#undef TM_CAT
#undef TM
#undef TMS
#undef K
