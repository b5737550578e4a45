/* sitepaths: print the install prefix compiled into this binary and the content of
 * <prefix>/share/sitepaths/site.txt, read through that compiled-in path.
 *
 * The prefix is a plain NUL-terminated string so the conda installer's binary prefix
 * replacement can rewrite it: installed anywhere, the program prints THAT prefix.
 */
#include <stdio.h>
#include <string.h>

#ifndef PREFIX
#error "compile with -DPREFIX=\"/install/prefix\""
#endif

static const char *const compiled_prefix = PREFIX;

int main(int argc, char **argv) {
    char path[4096];
    char line[1024];
    FILE *fh;

    if (argc > 1 && strcmp(argv[1], "--prefix") == 0) {
        printf("%s\n", compiled_prefix);
        return 0;
    }
    printf("prefix: %s\n", compiled_prefix);
    if (snprintf(path, sizeof path, "%s/share/sitepaths/site.txt", compiled_prefix) >= (int)sizeof path) {
        fprintf(stderr, "sitepaths: prefix too long\n");
        return 2;
    }
    fh = fopen(path, "r");
    if (fh == NULL) {
        perror(path);
        return 1;
    }
    while (fgets(line, sizeof line, fh) != NULL) {
        fputs(line, stdout);
    }
    fclose(fh);
    return 0;
}
