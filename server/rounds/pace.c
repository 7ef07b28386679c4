/* Load-sized group commits: the arithmetic of pace.h. */
#include "rounds/pace.h"

static double clamp_wait(double w) {
  return w < FL_AUTO_FLOOR_S ? FL_AUTO_FLOOR_S : w > FL_AUTO_MAX_WAIT_S ? FL_AUTO_MAX_WAIT_S : w;
}

void fl__pace_upload(fl_pace *p, double now, uint32_t waiting) {
  if (p->last_upload > 0 && waiting > 0) {
    double g = now - p->last_upload;
    g = g < FL_AUTO_MAX_WAIT_S ? g : FL_AUTO_MAX_WAIT_S;
    p->gap = p->gap > 0 ? 0.8 * p->gap + 0.2 * g : g;
  }
  p->last_upload = now;
  if (waiting == 0)
    p->first_upload = now;
}

void fl__pace_claim(fl_pace *p, double now, uint32_t waiting) {
  p->last_claim = now;
  if (waiting == 0)
    p->first_claim = now;
}

double fl__pace_uploads_due(const fl_pace *p) {
  if (p->gap <= 0 || p->gap > FL_AUTO_MAX_WAIT_S / 4)
    return p->first_upload + FL_AUTO_FLOOR_S;
  double full = p->first_upload + clamp_wait(FL_AUTO_WANT * p->gap);
  double idle = p->last_upload + clamp_wait(FL_AUTO_IDLE * p->gap);
  return full < idle ? full : idle;
}

double fl__pace_claims_due(const fl_pace *p) {
  double due = p->last_claim + FL_AUTO_FLOOR_S;
  return due < p->first_claim + FL_BATCH_MAX_WAIT_S ? due : p->first_claim + FL_BATCH_MAX_WAIT_S;
}
