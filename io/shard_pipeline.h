/* shard_pipeline.h — the pipeline on the shard runtime (internal; docs/ARCHITECTURE.md).
 *
 * One bds_shard_pipeline per shard: the shard's bds_pipeline, its MPSC inbox, and one
 * staging array per destination shard. The pipeline's port.post() stages a
 * message when called on a shard of the group (flushed once per tick with one
 * push_burst per destination, bells rung through MSG_RING on our own ring), or
 * pushes it straight into the inbox and writes the target's eventfd when
 * called from any other thread (a handler's own I/O thread). A full inbox
 * never blocks a shard: the rest stays staged, our bit goes into the target's
 * want_space, and its consumer rings us after its next drain. The pipeline
 * arms its timers on the shard's heap and reads the shard's tick clock. */
#ifndef BDS_IO_SHARD_PIPELINE_H
#define BDS_IO_SHARD_PIPELINE_H

#include "bidistream/pipeline.h"
#include "shard.h"

typedef struct bds_shard_pipelines bds_shard_pipelines;
typedef struct bds_shard_pipeline bds_shard_pipeline;

/* For n shards; seed is the key-hash seed every pipeline shares ({0,0}: random). */
bds_shard_pipelines *bds__shard_pipelines_create(uint32_t n, const uint64_t seed[2]);
/* After every pipe detached. NULL is a no-op. */
void bds__shard_pipelines_destroy(bds_shard_pipelines *g);

/* On shard s's own thread (its id is its index): creates its pipeline and inbox. */
bds_status bds__shard_pipeline_attach(bds_shard_pipelines *g, bds_shard *s, bds_shard_pipeline **out);
/* After EVERY shard of the group has stopped (another shard may be finishing a
 * push into this inbox until then); any thread. Asserts nothing is left. */
void bds__shard_pipeline_detach(bds_shard_pipeline *p);

bds_pipeline *bds__shard_pipeline_get(bds_shard_pipeline *p);
/* Shard hooks' helpers. Each returns true when work remains. */
bool bds__shard_pipeline_drain(bds_shard_pipeline *p, uint32_t budget);
bool bds__shard_pipeline_run(bds_shard_pipeline *p, uint32_t budget);
/* True when the shard may block now (nothing staged or queued, latch set). */
bool bds__shard_pipeline_prepare_sleep(bds_shard_pipeline *p);
void bds__shard_pipeline_woken(bds_shard_pipeline *p);
/* Nothing of any session left here: no session, call, key, staged message. */
bool bds__shard_pipeline_idle(bds_shard_pipeline *p);
/* Any thread, for a stall report (a shard dump hook): the inbox and its latch,
 * what is staged, the pipeline's live objects and counters. Relaxed reads. */
void bds__shard_pipeline_dump(bds_shard_pipeline *p, FILE *f);
/* Any thread: messages in its inbox not yet drained (a gauge; relaxed). */
uint64_t bds__shard_pipeline_inbox_depth(const bds_shard_pipeline *p);

#endif
