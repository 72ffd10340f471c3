/*
 * notaplugin.c - a shared library named like a Velo plugin that is not one.
 *
 * Built as libvelo-notaplugin.so for the start-up failure tests: the plugin
 * host finds it by its name, loads it, finds no velo_plugin_entry symbol and
 * must log the file and "not a Velo plugin", skip it, and go on.
 */
int velo_test_not_a_plugin(int x);

/* An ordinary exported function, so the library is not empty. */
int velo_test_not_a_plugin(int x) { return x + 1; }
