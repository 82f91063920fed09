/* noentry.c - a test plugin that forgot its entry point. */
int forkpool_plugn(void); /* a typo'd name */
int forkpool_plugn(void) { return 0; }
