/* Prints this process's resident memory from /proc/self/smaps: the total, and per mapping
 * (the program itself, each library, heap, anonymous) in KiB. */
#include <stdio.h>
#include <string.h>

static void floor_report(const char* when) {
  char names[64][256];
  long rss[64];
  int n = 0;
  long total = 0;
  char line[512], cur[256] = "[anonymous]";
  FILE* f = fopen("/proc/self/smaps", "r");
  if (!f) return;
  while (fgets(line, sizeof line, f)) {
    unsigned long a, b;
    char perms[8], path[256] = "";
    long kb;
    if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %255s", &a, &b, perms, path) >= 3) {
      snprintf(cur, sizeof cur, "%s", path[0] ? path : "[anonymous]");
      continue;
    }
    if (sscanf(line, "Rss: %ld kB", &kb) != 1 || kb == 0) continue;
    total += kb;
    int i = 0;
    while (i < n && strcmp(names[i], cur) != 0) ++i;
    if (i == n && n < 64) {
      snprintf(names[n], sizeof names[n], "%s", cur);
      rss[n++] = 0;
    }
    if (i < n) rss[i] += kb;
  }
  fclose(f);
  printf("  %-44s resident %6ld KiB\n", when, total);
  for (int i = 0; i < n; ++i)
    if (rss[i] >= 100) printf("      %6ld KiB  %s\n", rss[i], names[i]);
}
